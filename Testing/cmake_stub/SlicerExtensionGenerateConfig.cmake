# Stand-in for Slicer's extension description generation: records the metadata the Extensions
# Index reads, and fails like the real step when a required field is missing.
foreach(_var EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
             EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "${_var} is not set")
  endif()
  _slicer_stub_record("META" "${_var}" "${${_var}}")
endforeach()
_slicer_stub_record("META" "PROJECT_NAME" "${PROJECT_NAME}")
