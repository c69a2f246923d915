// SPDX-License-Identifier: MIT
// The installed client library is usable from an outside project through
// find_package(vlapic): install the `vlapic-client` component into a
// temporary prefix, configure and build tests/integration/package-consumer
// against it, and run the result against a live vlapicd.
#include "tests/integration/daemon_process.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>
#include <cstring>

namespace vlapic {
namespace {

using testing::runTool;

TEST_CASE("an outside project builds against the installed client library", "[integration][package]") {
  auto dir = testing::makeTempDir();
  KJ_DEFER(testing::removeTree(dir));
  auto prefix = kj::str(dir, "/prefix");
  auto build = kj::str(dir, "/build");

  auto install = runTool(CMAKE_COMMAND_PATH,
      {"--install", VLAPIC_BINARY_DIR, "--component", "vlapic-client", "--prefix", prefix});
  INFO(install.output.cStr());
  REQUIRE(install.exitCode == 0);

  kj::Vector<kj::StringPtr> configure;
  auto prefixArg = kj::str("-DCMAKE_PREFIX_PATH=", prefix);
  configure.addAll(std::initializer_list<kj::StringPtr>{
      "-S", PACKAGE_CONSUMER_SOURCE, "-B", build, prefixArg, "-DCMAKE_BUILD_TYPE=RelWithDebInfo"});
  // A sanitizer build's library needs the sanitizer runtimes in the consumer.
  if (strlen(VLAPIC_SANITIZE_FLAGS) > 0) {
    configure.add("-DCMAKE_CXX_FLAGS=" VLAPIC_SANITIZE_FLAGS);
    configure.add("-DCMAKE_EXE_LINKER_FLAGS=" VLAPIC_SANITIZE_FLAGS);
  }
  auto configured = runTool(CMAKE_COMMAND_PATH, configure);
  INFO(configured.output.cStr());
  REQUIRE(configured.exitCode == 0);
  auto built = runTool(CMAKE_COMMAND_PATH, {"--build", build});
  INFO(built.output.cStr());
  REQUIRE(built.exitCode == 0);

  testing::DaemonProcess daemon(VLAPICD_PATH);
  auto consumer = kj::str(build, "/consumer");
  auto ran = runTool(consumer, {daemon.socketPath()});
  INFO(ran.output.cStr());
  CHECK(ran.exitCode == 0);
  CHECK(strstr(ran.output.cStr(), "echo 5, APIC version 0x14") != nullptr);
}

}  // namespace
}  // namespace vlapic
