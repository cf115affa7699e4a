# `cmake --install` and CPack (.deb). What an installed deepshard holds, under CMAKE_INSTALL_PREFIX:
#   bin/                         deepshard, deepshard-shard, deepshard-coordinator, deepshard-launch,
#                                deepshard-thrift-client (those this configuration builds)
#   share/deepshard/slurm/       deepshard.sbatch (finds the installed programs on PATH)
#   share/deepshard/launch/      netns-cluster, netns-rsh (multi-host test cluster on one machine)
#   share/deepshard/configs/     model configs (configs/*.json, e.g. the full DeepSeek-V3 for `plan`)
#   share/deepshard/tokenizer/   the DeepSeek-V3 tokenizer (make-model --tokenizer)
#   share/deepshard/observability/  dashboards and alert rules, whatever observability/ holds
#   share/deepshard/examples/    the Thrift IDL and the Python client
#   share/doc/deepshard/         README.md, launch/README.md
# tests/install/deb_test.sh builds the .deb from a build tree, installs it and runs it.
include(GNUInstallDirs)

set(DS_SHARE ${CMAKE_INSTALL_DATADIR}/deepshard)
foreach(program deepshard deepshard-shard deepshard-coordinator deepshard-launch deepshard-thrift-client)
  if(TARGET ${program})
    install(TARGETS ${program} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()
install(PROGRAMS launch/slurm/deepshard.sbatch DESTINATION ${DS_SHARE}/slurm)
install(PROGRAMS launch/netns-cluster launch/netns-rsh DESTINATION ${DS_SHARE}/launch)
install(DIRECTORY configs/ DESTINATION ${DS_SHARE}/configs FILES_MATCHING PATTERN "*.json")
install(FILES testdata/tokenizer/tokenizer.json testdata/tokenizer/tokenizer_config.json
        DESTINATION ${DS_SHARE}/tokenizer)
# Dashboards (Grafana JSON) and alert rules (Prometheus YAML), wherever under observability/ they are.
if(EXISTS ${CMAKE_SOURCE_DIR}/observability)
  install(DIRECTORY observability/ DESTINATION ${DS_SHARE}/observability
          FILES_MATCHING PATTERN "*.json" PATTERN "*.yml" PATTERN "*.yaml" PATTERN "*.rules" PATTERN "*.md")
endif()
install(FILES coordinator/deepshard.thrift DESTINATION ${DS_SHARE}/examples)
install(PROGRAMS coordinator/examples/thrift_client.py DESTINATION ${DS_SHARE}/examples)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES launch/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR} RENAME README.launch.md)

# CPack: `cpack -G DEB` in the build tree. Runtime library dependencies come from dpkg-shlibdeps
# (so they are the exact Debian 12 packages the binaries link); mpirun comes from openmpi-bin.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME deepshard)
set(CPACK_PACKAGE_VENDOR deepshard)
set(CPACK_PACKAGE_CONTACT "deepshard developers <deepshard@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "DeepSeek-V3/R1 inference across GPU and CPU clusters")
set(CPACK_PACKAGE_DESCRIPTION
    "deepshard serves DeepSeek-V3 / R1 across a cluster with MPI, UCX and NCCL: the deepshard tool (make-model, inspect, generate, plan), the shard job, the coordinator (Thrift + OpenAI-compatible HTTP) and deepshard-launch.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "openmpi-bin")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "curl")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "slurm-client, python3-thrift")
if(DS_WITH_CUDA)
  # libcudart/libcublasLt/libnccl come from the CUDA toolkit, not from a Debian package.
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CUDAToolkit_LIBRARY_DIR})
endif()
include(CPack)
