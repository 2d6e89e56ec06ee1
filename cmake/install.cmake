# Install rules (included from the top-level CMakeLists.txt when KVBM_INSTALL is on):
#   include/kvbm/*.hpp (with the generated version.hpp), the library, kvbm-ctl,
#   lib/cmake/kvbm/kvbmConfig.cmake + kvbmConfigVersion.cmake (find_package(kvbm CONFIG) gives
#   kvbm::kvbm) and lib/pkgconfig/kvbm.pc. tests/install/install_test.sh checks both ways of
#   consuming an installed kvbm.
include(CMakePackageConfigHelpers)

set(KVBM_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/kvbm CACHE STRING
    "Install directory of kvbmConfig.cmake, relative to CMAKE_INSTALL_PREFIX")

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/kvbm DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")
install(FILES ${KVBM_GENERATED_INCLUDE_DIR}/kvbm/version.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvbm)
install(TARGETS kvbm EXPORT kvbmTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET kvbm-ctl)
  install(TARGETS kvbm-ctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

install(EXPORT kvbmTargets NAMESPACE kvbm:: FILE kvbmTargets.cmake
        DESTINATION ${KVBM_INSTALL_CMAKEDIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/kvbmConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/kvbmConfig.cmake
                              INSTALL_DESTINATION ${KVBM_INSTALL_CMAKEDIR})
# Before 1.0 a minor release may change the API, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvbmConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/kvbmConfig.cmake ${PROJECT_BINARY_DIR}/kvbmConfigVersion.cmake
        DESTINATION ${KVBM_INSTALL_CMAKEDIR})

# pkg-config: the prefix is found relative to the .pc file itself (${pcfiledir}), so the file is
# right wherever `cmake --install --prefix` puts it. A static libkvbm lists what it links against
# in Libs (pkg-config --libs without --static must be enough); a shared one keeps them private.
file(RELATIVE_PATH _kvbm_pc_to_prefix
     /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" _kvbm_pc_to_prefix "${_kvbm_pc_to_prefix}")
get_target_property(_kvbm_type kvbm TYPE)
if(_kvbm_type STREQUAL "STATIC_LIBRARY")
  set(KVBM_PC_LIBS "-lkvbm -lfmt -lxxhash -lrt -pthread")
  set(KVBM_PC_LIBS_PRIVATE "")
else()
  set(KVBM_PC_LIBS "-lkvbm -lfmt")
  set(KVBM_PC_LIBS_PRIVATE "-lxxhash -lrt -pthread")
endif()
set(KVBM_PC_PREFIX "\${pcfiledir}/${_kvbm_pc_to_prefix}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/kvbm.pc.in ${PROJECT_BINARY_DIR}/kvbm.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/kvbm.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(FILES ${PROJECT_SOURCE_DIR}/LICENSE ${PROJECT_SOURCE_DIR}/README.md
              ${PROJECT_SOURCE_DIR}/CHANGELOG.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
