# Stand-in for Slicer's UseSlicer.cmake (see SlicerConfig.cmake in this folder).
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(MASKSAM_STUB_RECORD "${CMAKE_BINARY_DIR}/slicer_stub_record.txt")
file(WRITE "${MASKSAM_STUB_RECORD}" "")

function(_slicer_stub_record kind key value)
  file(APPEND "${MASKSAM_STUB_RECORD}" "${kind}|${key}|${value}\n")
endfunction()

# CTK's macro: copies SCRIPTS and RESOURCES (paths relative to SOURCE_DIR) into DESTINATION_DIR
# and installs them under INSTALL_DIR with the same relative paths.
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ctkMacroCompilePythonScript: unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(_required TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${_required})
      message(FATAL_ERROR "ctkMacroCompilePythonScript: ${_required} is mandatory")
    endif()
  endforeach()
  if(NOT MY_NO_INSTALL_SUBDIR)
    message(FATAL_ERROR "ctkMacroCompilePythonScript: this stub models NO_INSTALL_SUBDIR only")
  endif()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  foreach(_kind SCRIPTS RESOURCES)
    foreach(_file IN LISTS MY_${_kind})
      if(IS_ABSOLUTE "${_file}")
        message(FATAL_ERROR "ctkMacroCompilePythonScript(${MY_TARGET_NAME}): absolute path ${_file} would be installed outside the module folder")
      endif()
      set(_source "${MY_SOURCE_DIR}/${_file}")
      if(NOT EXISTS "${_source}")
        message(FATAL_ERROR "ctkMacroCompilePythonScript(${MY_TARGET_NAME}): ${_source} does not exist")
      endif()
      get_filename_component(_subdir "${_file}" DIRECTORY)
      install(FILES "${_source}" DESTINATION "${MY_INSTALL_DIR}/${_subdir}")
      _slicer_stub_record("${_kind}" "${MY_TARGET_NAME}" "${_file}")
    endforeach()
  endforeach()
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED MY_SLICER_NAME)
    message(FATAL_ERROR "NAME is mandatory")
  endif()
  foreach(_kind SCRIPTS RESOURCES)
    foreach(_file IN LISTS MY_SLICER_${_kind})
      if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_file}" AND NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_file}.py")
        message(FATAL_ERROR "slicerMacroBuildScriptedModule(${_kind}) given nonexistent file or directory '${_file}'")
      endif()
    endforeach()
  endforeach()
  _slicer_stub_record("MODULE" "${MY_SLICER_NAME}" "${CMAKE_CURRENT_SOURCE_DIR}")
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"
    INSTALL_DIR "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    NO_INSTALL_SUBDIR
    )
endmacro()

function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}")
    message(FATAL_ERROR "slicer_add_python_unittest: ${MY_SCRIPT} does not exist")
  endif()
  _slicer_stub_record("UNITTEST" "${MY_SCRIPT}" "${CMAKE_CURRENT_SOURCE_DIR}")
endfunction()
