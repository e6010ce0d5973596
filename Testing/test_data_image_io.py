"""Image I/O keeps every voxel and the exact grid, and rejects unusable files with one clear line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from MaskSAMCore.data import image_writing
from MaskSAMCore.data.image_io import ImageGeometry, read_case, read_geometry, read_image, read_label
from MaskSAMCore.data.image_writing import write_image, write_label
from MaskSAMCore.errors import InputError


def rotation(degrees: float, axis=(1.0, 2.0, 3.0)) -> np.ndarray:
    axis = np.asarray(axis) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def oblique_geometry(size=(11, 9, 7)) -> ImageGeometry:
    """Odd sizes, anisotropic spacing, a 12 degree oblique direction, an arbitrary origin."""
    return ImageGeometry(size, (0.7123, 1.3, 4.1), (-123.456789, 45.1234567, -300.987654),
                         tuple(rotation(12.0).ravel()))


def assert_same_geometry(read: ImageGeometry, written: ImageGeometry, ending: str) -> None:
    assert read.size == written.size
    # NIfTI stores geometry as float32; NRRD and MHA as text / double.
    rtol = 1e-6 if ending.startswith(".nii") else 1e-12
    np.testing.assert_allclose(read.spacing, written.spacing, rtol=rtol)
    np.testing.assert_allclose(read.origin, written.origin, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(read.direction, written.direction, atol=10 * rtol)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_image_and_label_round_trip_keeps_values_and_geometry(tmp_path, ending):
    geometry = oblique_geometry()
    rng = np.random.default_rng(0)
    image = rng.normal(40, 300, size=geometry.shape_zyx).astype(np.float32)
    labels = rng.integers(0, 4, size=geometry.shape_zyx).astype(np.uint8)

    write_image(image, geometry, tmp_path / f"image{ending}")
    write_label(labels, geometry, tmp_path / f"labels{ending}")
    image_back, image_geometry = read_image(tmp_path / f"image{ending}")
    labels_back, label_geometry = read_label(tmp_path / f"labels{ending}")

    np.testing.assert_array_equal(image_back, image)
    np.testing.assert_array_equal(labels_back, labels)
    assert labels_back.dtype == np.int16 and image_back.dtype == np.float32
    assert_same_geometry(image_geometry, geometry, ending)
    assert_same_geometry(label_geometry, geometry, ending)
    assert read_geometry(tmp_path / f"image{ending}") == image_geometry
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"image{ending}", f"labels{ending}"])


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_a_label_written_on_a_read_grid_lands_exactly_on_it(tmp_path, ending):
    """What the predictor does: read an input, write a label map on its geometry."""
    geometry = oblique_geometry()
    write_image(np.zeros(geometry.shape_zyx, np.int16), geometry, tmp_path / f"in{ending}")
    _, read = read_image(tmp_path / f"in{ending}")
    write_label(np.ones(read.shape_zyx, np.uint8), read, tmp_path / f"out{ending}")
    reference = sitk.ReadImage(str(tmp_path / f"in{ending}"))
    output = sitk.ReadImage(str(tmp_path / f"out{ending}"))
    assert output.GetSize() == reference.GetSize()
    # Identical up to the last bits of a double (NRRD recomputes spacing from its direction vectors).
    np.testing.assert_allclose(output.GetSpacing(), reference.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(output.GetOrigin(), reference.GetOrigin(), rtol=1e-12)
    np.testing.assert_allclose(output.GetDirection(), reference.GetDirection(), atol=1e-12)


def test_geometry_dict_round_trip_and_axis_orders():
    geometry = oblique_geometry()
    assert ImageGeometry.from_dict(geometry.to_dict()) == geometry
    assert geometry.shape_zyx == (7, 9, 11)
    assert geometry.spacing_zyx == (4.1, 1.3, 0.7123)
    assert geometry.same_grid(ImageGeometry(geometry.size, geometry.spacing,
                                            tuple(np.add(geometry.origin, 1e-6)), geometry.direction))
    shifted = ImageGeometry(geometry.size, geometry.spacing, tuple(np.add(geometry.origin, 0.5)), geometry.direction)
    assert shifted.grid_differences(geometry) == ["origin"]


@pytest.mark.parametrize("origin_z", [-12.25, -1210.25], ids=["near the world's origin", "1.2 m from it"])
def test_an_origin_shift_counts_in_voxels_wherever_the_grid_lies(origin_z):
    """0.12 mm is a thirtieth of a 3.5 mm slice: another grid, however far from the world's origin
    the scan lies; float32 rounding (about 1e-4 mm there) is the same grid."""
    grid = ImageGeometry((40, 40, 12), (0.7, 0.7, 3.5), (-200.3, -180.7, origin_z), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    def moved(dz: float) -> ImageGeometry:
        return ImageGeometry(grid.size, grid.spacing, tuple(np.add(grid.origin, (0, 0, dz))), grid.direction)
    assert moved(0.12).grid_differences(grid) == ["origin"]
    assert grid.grid_differences(moved(0.12)) == ["origin"]
    float32_origin = tuple(float(np.float32(v)) for v in grid.origin)
    assert grid.same_grid(ImageGeometry(grid.size, grid.spacing, float32_origin, grid.direction))
    assert grid.same_grid(moved(1e-4))


def write_raw(path, image: sitk.Image) -> None:
    sitk.WriteImage(image, str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"nothere\.nii\.gz: file not found"):
        read_image(tmp_path / "nothere.nii.gz")


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image" * 20)
    with pytest.raises(InputError, match=r"broken\.nii\.gz: cannot read it as an image") as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_two_dimensional_image_is_rejected(tmp_path):
    write_raw(tmp_path / "slice.nii.gz", sitk.Image([8, 9], sitk.sitkFloat32))
    with pytest.raises(InputError, match=r"slice\.nii\.gz: is a 2D image"):
        read_image(tmp_path / "slice.nii.gz")


def test_four_dimensional_image_is_rejected_but_a_singleton_fourth_axis_is_3d(tmp_path):
    write_raw(tmp_path / "series.mha", sitk.Image([4, 5, 6, 2], sitk.sitkFloat32))
    with pytest.raises(InputError, match=r"series\.mha: is a 4D image"):
        read_image(tmp_path / "series.mha")
    write_raw(tmp_path / "single.mha", sitk.Image([4, 5, 6, 1], sitk.sitkFloat32))
    array, geometry = read_image(tmp_path / "single.mha")
    assert array.shape == (6, 5, 4) and geometry.size == (4, 5, 6)


def test_single_slice_volume_and_constant_image_are_accepted(tmp_path):
    image = sitk.Image([8, 9, 1], sitk.sitkInt16) + 5
    write_raw(tmp_path / "one.nrrd", image)
    array, geometry = read_image(tmp_path / "one.nrrd")
    assert array.shape == (1, 9, 8) and np.all(array == 5) and geometry.size == (8, 9, 1)


def test_vector_pixels_are_rejected(tmp_path):
    write_raw(tmp_path / "rgb.nii.gz", sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3))
    with pytest.raises(InputError, match=r"rgb\.nii\.gz: has 3 values per voxel"):
        read_image(tmp_path / "rgb.nii.gz")


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_are_rejected(tmp_path, ending, dtype):
    """Also in NIfTI, although ITK's NIfTI reader turns NaN/Inf into 0 (the file is scanned)."""
    array = np.zeros((3, 4, 5), dtype)
    array[1, 2, 3] = np.nan
    array[2, 0, 0] = -np.inf
    write_raw(tmp_path / f"nan{ending}", sitk.GetImageFromArray(array))
    with pytest.raises(InputError, match=rf"nan{ending}: contains 2 NaN/Inf voxel"):
        read_image(tmp_path / f"nan{ending}")


def _nifti_bytes(version: int, order: str, values: np.ndarray) -> bytes:
    """A minimal NIfTI-1 or NIfTI-2 single file written by hand (ITK writes only little-endian
    NIfTI-1): the header fields the NaN scan reads, then the voxels."""
    import struct

    dims = (3, values.shape[2], values.shape[1], values.shape[0], 1, 1, 1, 1)
    datatype = {np.dtype(np.float32): 16, np.dtype(np.float64): 64, np.dtype(np.int16): 4}[values.dtype]
    if version == 1:
        header = bytearray(352)
        struct.pack_into(order + "i", header, 0, 348)
        struct.pack_into(order + "8h", header, 40, *dims)
        struct.pack_into(order + "h", header, 70, datatype)
        struct.pack_into(order + "f", header, 108, 352.0)
    else:
        header = bytearray(544)
        struct.pack_into(order + "i", header, 0, 540)
        struct.pack_into(order + "h", header, 12, datatype)
        struct.pack_into(order + "8q", header, 16, *dims)
        struct.pack_into(order + "q", header, 168, 544)
    return bytes(header) + values.astype(values.dtype.newbyteorder(order)).tobytes()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti_scan_reads_both_versions_and_byte_orders(tmp_path, version, order):
    import gzip

    from MaskSAMCore.data.nifti_values import count_non_finite_voxels

    values = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    values[0, 0, 0], values[3, 4, 5], values[2, 2, 2] = np.nan, np.inf, -np.inf
    (tmp_path / "a.nii").write_bytes(_nifti_bytes(version, order, values))
    (tmp_path / "a.nii.gz").write_bytes(gzip.compress(_nifti_bytes(version, order, values.astype(np.float64))))
    (tmp_path / "int.nii").write_bytes(_nifti_bytes(version, order, np.ones((4, 5, 6), np.int16)))
    assert count_non_finite_voxels(tmp_path / "a.nii") == 3
    assert count_non_finite_voxels(tmp_path / "a.nii.gz") == 3
    assert count_non_finite_voxels(tmp_path / "int.nii") == 0
    (tmp_path / "not.nii").write_bytes(b"\0" * 600)
    with pytest.raises(ValueError, match="not a NIfTI"):
        count_non_finite_voxels(tmp_path / "not.nii")


def test_label_with_fractions_or_negative_values_is_rejected(tmp_path):
    write_raw(tmp_path / "soft.nii.gz", sitk.GetImageFromArray(np.full((2, 3, 4), 0.5, np.float32)))
    with pytest.raises(InputError, match=r"soft\.nii\.gz: label map contains non-integer values"):
        read_label(tmp_path / "soft.nii.gz")
    write_raw(tmp_path / "neg.nii.gz", sitk.GetImageFromArray(np.full((2, 3, 4), -1, np.int16)))
    with pytest.raises(InputError, match=r"neg\.nii\.gz: label map contains negative values"):
        read_label(tmp_path / "neg.nii.gz")


@pytest.mark.parametrize("ending", [".nrrd", ".nii", ".nii.gz"])
def test_nan_in_a_float_label_map_is_rejected_not_read_as_background(tmp_path, ending):
    """ITK's NIfTI reader turns NaN into 0: without scanning the file, NaN voxels became background."""
    labels = np.ones((3, 4, 5), np.float32)
    labels[1, 2, 3] = np.nan
    labels[2, 0, 0] = np.inf
    write_raw(tmp_path / f"nan{ending}", sitk.GetImageFromArray(labels))
    with pytest.raises(InputError, match=rf"nan{ending}: label map contains 2 NaN/Inf value\(s\)"):
        read_label(tmp_path / f"nan{ending}")


def test_read_case_stacks_channels_and_rejects_a_channel_on_another_grid(tmp_path):
    geometry = oblique_geometry()
    write_image(np.full(geometry.shape_zyx, 1, np.int16), geometry, tmp_path / "c_0000.nrrd")
    write_image(np.full(geometry.shape_zyx, 2, np.int16), geometry, tmp_path / "c_0001.nrrd")
    image, read = read_case([tmp_path / "c_0000.nrrd", tmp_path / "c_0001.nrrd"])
    assert image.shape == (2,) + geometry.shape_zyx and image.dtype == np.float32
    assert image[0].max() == 1 and image[1].min() == 2 and read.same_grid(geometry)

    moved = ImageGeometry(geometry.size, geometry.spacing, (0.0, 0.0, 0.0), geometry.direction)
    write_image(np.zeros(geometry.shape_zyx, np.int16), moved, tmp_path / "c_0002.nrrd")
    with pytest.raises(InputError, match=r"c_0002\.nrrd: its origin differ"):
        read_case([tmp_path / "c_0000.nrrd", tmp_path / "c_0002.nrrd"])


def test_failed_write_leaves_the_existing_file_untouched(tmp_path, monkeypatch):
    geometry = oblique_geometry()
    target = tmp_path / "labels.nii.gz"
    write_label(np.ones(geometry.shape_zyx, np.uint8), geometry, target)
    before = target.read_bytes()

    def half_write(image, path, useCompression=False):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("sitk::ERROR: disk full")

    monkeypatch.setattr(image_writing.sitk, "WriteImage", half_write)
    with pytest.raises(InputError, match=r"labels\.nii\.gz: cannot write an image here \(disk full\)"):
        write_label(np.zeros(geometry.shape_zyx, np.uint8), geometry, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]  # no temporary left behind


@pytest.mark.parametrize("ending", [".nii.gz", ".nhdr"])
def test_every_file_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch, ending):
    """After a power cut the destination is the old file or the whole new one, never an empty
    one: each temporary (a detached header's data file too) is fsynced, complete, before os.replace."""
    import os

    from MaskSAMCore import atomic

    synced, replaced = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        status = os.fstat(fd)
        synced.add((status.st_ino, status.st_size))
        real_fsync(fd)

    def replace(source, destination):
        status = os.stat(source)
        replaced.append(((status.st_ino, status.st_size), os.path.basename(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    geometry = oblique_geometry()
    write_label(np.ones(geometry.shape_zyx, np.uint8), geometry, tmp_path / f"labels{ending}")
    assert len(replaced) == (2 if ending == ".nhdr" else 1)
    for key, name in replaced:
        assert key in synced, f"{name} was renamed into place without being flushed first"


def test_written_files_get_the_permissions_of_the_users_umask(tmp_path):
    """Temporaries are created 0600; a label map, a JSON report or a checkpoint must end up readable
    as any file the user makes (a colleague on a shared server opens the results)."""
    import os
    import stat

    from MaskSAMCore.atomic import write_json

    if os.name == "nt":
        pytest.skip("POSIX permission bits")
    geometry = oblique_geometry()
    previous = os.umask(0o022)
    try:
        write_label(np.ones(geometry.shape_zyx, np.uint8), geometry, tmp_path / "labels.nrrd")
        write_json(tmp_path / "report.json", {"mean_dice": 0.9})
    finally:
        os.umask(previous)
    for name in ("labels.nrrd", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_writer_that_fails_half_way_leaves_the_previous_file(tmp_path):
    """`write_with` (cached preprocessed arrays, progress plots): same promise as the image writers."""
    from MaskSAMCore.atomic import write_with

    target = tmp_path / "case.npy"
    target.write_bytes(b"the previous, complete array")

    def half_writer(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with(target, half_writer)
    assert target.read_bytes() == b"the previous, complete array"
    assert [p.name for p in tmp_path.iterdir()] == ["case.npy"]


def test_write_rejects_an_array_that_does_not_fit_the_grid(tmp_path):
    geometry = oblique_geometry()
    with pytest.raises(ValueError, match="does not match"):
        write_label(np.zeros((7, 11, 9), np.uint8), geometry, tmp_path / "x.nrrd")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ending, data_file", [(".nhdr", "labels.raw.gz"), (".mhd", "labels.zraw")])
def test_detached_header_and_its_data_survive_the_next_run_in_the_folder(tmp_path, ending, data_file):
    from MaskSAMCore.atomic import remove_stale_temporaries

    geometry = oblique_geometry()
    labels = np.arange(np.prod(geometry.shape_zyx), dtype=np.int16).reshape(geometry.shape_zyx) % 5
    write_label(labels, geometry, tmp_path / f"labels{ending}")
    # The header names its data file by its final name, and the data file is there.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"labels{ending}", data_file])
    assert remove_stale_temporaries(tmp_path) == 0        # what the next `masksam predict` does first
    back, read = read_label(tmp_path / f"labels{ending}")
    np.testing.assert_array_equal(back, labels)
    assert_same_geometry(read, geometry, ending)


def test_a_temporary_folder_left_by_a_killed_process_is_removed(tmp_path):
    from MaskSAMCore.atomic import TEMP_MARKER, remove_stale_temporaries

    stale = tmp_path / f".labels.nhdr{TEMP_MARKER}abc123"
    stale.mkdir()
    (stale / "labels.raw.gz").write_bytes(b"half")
    (tmp_path / "keep.nrrd").write_bytes(b"user's")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nrrd"]


def sheared_geometry() -> ImageGeometry:
    """A gantry tilt: the slice axis leans 15 degrees, so the direction is not orthonormal."""
    tilt = np.deg2rad(15.0)
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, np.sin(tilt)], [0.0, 0.0, np.cos(tilt)]])
    return ImageGeometry((9, 8, 5), (0.7, 0.9, 3.0), (-20.0, 35.5, 102.0), tuple(direction.ravel()))


@pytest.mark.parametrize("geometry, ending, lost", [
    (sheared_geometry(), ".nii.gz", "direction"),
    (oblique_geometry(), ".tif", "spacing, origin and direction"),
])
def test_a_format_that_cannot_keep_the_grid_is_refused_and_nothing_is_written(tmp_path, geometry, ending, lost):
    target = tmp_path / f"labels{ending}"
    with pytest.raises(InputError, match=rf"labels{re.escape(ending)}: this file format cannot store the grid's "
                                         rf"{lost} exactly .* choose \.nrrd or \.mha"):
        write_label(np.ones(geometry.shape_zyx, np.uint8), geometry, target)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=f"cannot store the grid's {lost}"):
        image_writing.check_format_keeps(geometry, target)       # the same answer before any work
    image_writing.check_format_keeps(geometry, tmp_path / "labels.nrrd")   # NRRD keeps any grid


@pytest.mark.parametrize("name", ["labels.nii.gz.nii.gz", "ct.v2.nii.gz", "labels.nrrd.nrrd", "scan.1.mha"])
def test_a_name_with_more_dots_is_written_under_exactly_that_name(tmp_path, name):
    """A label map named after a case file (``case.nii.gz`` + ``.nii.gz``) is written as named:
    NIfTI's own writer would drop one ``.nii.gz`` and write ``labels.nii.gz`` instead."""
    geometry = oblique_geometry()
    target = tmp_path / name
    image_writing.check_format_keeps(geometry, target)
    labels = np.arange(np.prod(geometry.shape_zyx), dtype=np.uint8).reshape(geometry.shape_zyx) % 5
    write_label(labels, geometry, target)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    np.testing.assert_array_equal(read_label(target)[0], labels)
    assert_same_geometry(read_geometry(target), geometry, ".nii" if ".nii" in name else ".nrrd")
