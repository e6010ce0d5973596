# Stand-in for Slicer's extension packaging step: only records that the extension reached it.
_slicer_stub_record("CPACK" "${PROJECT_NAME}" "included")
