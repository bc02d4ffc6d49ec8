# Small target helpers in the shape of Abseil's absl_cc_library.
#
# signet_cc_library(NAME hsm SRCS a.cc HDRS a.h DEPS ... PUBLIC_DEPS ...)
#   defines signet_hsm with the alias signet::hsm. Headers are included
#   from the repository root ("hsm/ckr.h").
function(signet_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS;PUBLIC_DEPS" ${ARGN})
  add_library(signet_${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
  add_library(signet::${ARG_NAME} ALIAS signet_${ARG_NAME})
  target_include_directories(signet_${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(signet_${ARG_NAME} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_DEPS})
endfunction()

# signet_cc_test(NAME ckr_test SRCS ckr_test.cc DEPS signet::hsm [LABELS ...])
#   a GoogleTest binary whose tests ctest discovers one by one.
function(signet_cc_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  # Tests that start no process are "unit": scripts/test -L unit runs them
  # alone in seconds. Module tests against a SoftHSM2 token made with
  # softhsm2-util say LABELS softhsm; those that start signetd or p11-kit
  # server, LABELS integration.
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  gtest_discover_tests(${ARG_NAME}
    TEST_PREFIX "${ARG_NAME}."
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
endfunction()

# signet_proto_library(NAME config_proto PROTOS signet/v1/config.proto
#                      [GRPC] [IMPORT_DIR dir])
#   compiles .proto files (paths relative to IMPORT_DIR, default this folder)
#   into signet::NAME; generated headers are included as "signet/v1/x.pb.h".
function(signet_proto_library)
  cmake_parse_arguments(ARG "GRPC" "NAME;IMPORT_DIR" "PROTOS;DEPS" ${ARGN})
  if(NOT ARG_IMPORT_DIR)
    set(ARG_IMPORT_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(out_dir ${PROJECT_BINARY_DIR}/gen)
  file(MAKE_DIRECTORY ${out_dir})
  get_target_property(grpc_plugin gRPC::grpc_cpp_plugin LOCATION)
  set(srcs)
  foreach(proto ${ARG_PROTOS})
    string(REGEX REPLACE "\\.proto$" "" base ${proto})
    set(outputs ${out_dir}/${base}.pb.cc ${out_dir}/${base}.pb.h)
    set(args --cpp_out=${out_dir})
    if(ARG_GRPC)
      list(APPEND outputs ${out_dir}/${base}.grpc.pb.cc ${out_dir}/${base}.grpc.pb.h)
      list(APPEND args --grpc_out=${out_dir} --plugin=protoc-gen-grpc=${grpc_plugin})
    endif()
    # protoc writes the .proto files this one imports, transitively, into a
    # depfile, so changing an imported file regenerates this one too.
    set(depfile ${out_dir}/${base}.pb.d)
    # Ninja matches the depfile's first target against the command's first
    # output; protoc writes its targets sorted, so sort ours the same way (or
    # every build regenerates and recompiles every gRPC proto).
    list(SORT outputs)
    add_custom_command(
      OUTPUT ${outputs}
      COMMAND protobuf::protoc
      ARGS ${args} --dependency_out=${depfile}
           -I${ARG_IMPORT_DIR} -I${PROJECT_SOURCE_DIR}/proto
           -I${Protobuf_INCLUDE_DIRS} ${ARG_IMPORT_DIR}/${proto}
      DEPENDS ${ARG_IMPORT_DIR}/${proto} protobuf::protoc
      DEPFILE ${depfile}
      COMMENT "protoc ${proto}")
    list(APPEND srcs ${outputs})
  endforeach()
  add_library(signet_${ARG_NAME} STATIC ${srcs})
  add_library(signet::${ARG_NAME} ALIAS signet_${ARG_NAME})
  target_include_directories(signet_${ARG_NAME} PUBLIC ${out_dir})
  target_link_libraries(signet_${ARG_NAME} PUBLIC protobuf::libprotobuf ${ARG_DEPS})
  if(ARG_GRPC)
    target_link_libraries(signet_${ARG_NAME} PUBLIC gRPC::grpc++)
  endif()
  target_compile_options(signet_${ARG_NAME} PRIVATE -Wno-unused-parameter)
endfunction()
