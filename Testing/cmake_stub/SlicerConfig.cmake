# A stand-in for a Slicer build tree, for testing the extension's CMake files without Slicer:
#   cmake -S <repository> -B <build> -DSlicer_DIR=<repository>/Testing/cmake_stub
# It defines the variables and macros the extension uses. The macros check their arguments the
# way Slicer's do, record what they are given in ${CMAKE_BINARY_DIR}/slicer_stub_record.txt,
# and install the files with CMake's real install(), so `cmake --install` builds the layout an
# installed extension has.
set(Slicer_FOUND TRUE)
set(Slicer_VERSION "5.8.0")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
