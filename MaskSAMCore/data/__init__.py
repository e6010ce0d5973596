"""Data: from image files to training batches, and from predictions back to the input's grid.

One concept per module (imports stay explicit, nothing heavy is imported here):

- `image_io`, `image_writing`: read and write images and label maps with their exact geometry
  (`ImageGeometry`); `nifti_values` (NaN/Inf voxels and files cut short, which ITK's NIfTI
  reader hides) and `read_failures` (why a file could not be read, in words a user can act on),
  `header_checks` (headers that would misplace voxels) and `nifti_transforms` (qform and sform)
  serve them.
- `dicom_headers`, `dicom_series`: a folder of DICOM slices as one checked series
  (`read_series_headers`, `choose_series`), read by `image_io` like an image file.
- `dataset`, `dataset_json`: nnU-Net v2 raw datasets, validated case by case (`load_raw_dataset`).
- `planning`: target spacing, slice axis, normalisation, patch size (`plan_experiment`).
- `orientation`, `cropping`, `resampling`, `normalization`: the steps of `preprocessing`
  (`preprocess_case`, `restore_label_map`, `restore_scores_argmax`); `orientation` brings a case
  to LPS voxel order (`lps_reorientation`) and back.
- `preprocess_runner`, `store`: a whole dataset preprocessed into a folder, and read back.
- `augmentation`, `sampling`, `loader_worker`, `loader`: augmented patches in worker processes
  (`PatchLoader`); `processes`: starting and stopping those workers.
- `phantom_anatomy`, `phantoms`: synthetic abdominal CT datasets (`make_phantoms`).
"""
