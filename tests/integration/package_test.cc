// SPDX-License-Identifier: MIT
// The installed client library is usable from an outside project through
// find_package(vlapic): install the `vlapic-client` component into a
// temporary prefix, configure and build tests/integration/package-consumer
// against it, and run the result against a live vlapicd.
#include "tests/integration/daemon_process.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>
#include <cstring>
#include <unistd.h>

namespace vlapic {
namespace {

using testing::runTool;

TEST_CASE("an outside project builds against the installed client library", "[integration][package]") {
  auto dir = testing::makeTempDir();
  KJ_DEFER(testing::removeTree(dir));
  auto prefix = kj::str(dir, "/prefix");
  auto build = kj::str(dir, "/build");

  // The runtime library and the development files, as the two packages a
  // distribution would make of them.
  for (kj::StringPtr component : {"vlapic-client"_kj, "vlapic-dev"_kj}) {
    auto install = runTool(CMAKE_COMMAND_PATH,
        {"--install", VLAPIC_BINARY_DIR, "--component", component, "--prefix", prefix});
    INFO(install.output.cStr());
    REQUIRE(install.exitCode == 0);
  }
  // The client's headers and the model's they include ship; nothing of the
  // server's internals does (issue 15).
  for (auto header: {"client/lib/vlapic_client.h", "schema/model/regview.h", "schema/model/dump.h",
                     "schema/channel/channel.h"}) {
    INFO(header);
    CHECK(access(kj::str(prefix, "/include/vlapic/", header).cStr(), R_OK) == 0);
  }
  CHECK(access(kj::str(prefix, "/include/vlapic/server").cStr(), F_OK) != 0);

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
  CHECK(strstr(ran.output.cStr(), "Version") != nullptr);  // the model's decoded dump
}

TEST_CASE("C API: bad arguments, refused requests and a dead vlapicd are error codes with a "
          "message, never a crash",
          "[integration][capi]") {
  testing::DaemonProcess daemon(VLAPICD_PATH);
  auto pid = kj::str(daemon.pid());
  auto ran = runTool(CAPI_ERRORS_PATH, {daemon.socketPath(), pid});
  INFO(ran.output.cStr());
  CHECK(ran.exitCode == 0);
  CHECK(strstr(ran.output.cStr(), "capi-errors: 0 failed") != nullptr);
}

TEST_CASE("C API: the example C front passes its checks over the shared-memory channel",
          "[integration][capi]") {
  testing::DaemonProcess daemon(VLAPICD_PATH);
  auto ran = runTool(C_FRONT_PATH, {daemon.socketPath()});
  INFO(ran.output.cStr());
  CHECK(ran.exitCode == 0);
  CHECK(strstr(ran.output.cStr(), "c-front: all checks passed") != nullptr);
  CHECK(strstr(ran.output.cStr(), "FAILED") == nullptr);
  // Everything went over the channel: vlapicd served it there.
  CHECK(daemon.running());
}

TEST_CASE("C API: a C front builds with pkg-config against the installed tree and runs against "
          "the installed vlapicd",
          "[integration][capi][package]") {
  auto dir = testing::makeTempDir();
  KJ_DEFER(testing::removeTree(dir));
  auto prefix = kj::str(dir, "/prefix");
  auto install = runTool(CMAKE_COMMAND_PATH, {"--install", VLAPIC_BINARY_DIR, "--prefix", prefix});
  INFO(install.output.cStr());
  REQUIRE(install.exitCode == 0);

  // The example's own Makefile, as its README tells a VMM developer.
  auto source = kj::str(dir, "/c-front");
  auto copied = runTool("/bin/cp", {"-r", C_FRONT_SOURCE, source});
  REQUIRE(copied.exitCode == 0);
  auto pkgConfigPath = kj::str("PKG_CONFIG_PATH=", prefix, "/", VLAPIC_INSTALL_LIBDIR, "/pkgconfig");
  kj::Vector<kj::StringPtr> make;
  make.addAll(std::initializer_list<kj::StringPtr>{pkgConfigPath, "make", "-C", source});
  // A sanitizer build's library needs the sanitizer runtimes in the program.
  auto cflags = kj::str("CFLAGS=-O2 -g ", VLAPIC_SANITIZE_FLAGS);
  auto ldflags = kj::str("LDFLAGS=", VLAPIC_SANITIZE_FLAGS);
  make.add(cflags);
  make.add(ldflags);
  auto built = runTool("/usr/bin/env", make);
  INFO(built.output.cStr());
  REQUIRE(built.exitCode == 0);

  // The installed daemon finds what it needs by itself (RUNPATH); the
  // example, installed nowhere, is pointed at the library.
  auto installedDaemon = kj::str(prefix, "/bin/vlapicd");
  testing::DaemonProcess daemon(installedDaemon);
  auto libraryPath = kj::str("LD_LIBRARY_PATH=", prefix, "/", VLAPIC_INSTALL_LIBDIR);
  auto program = kj::str(source, "/c-front");
  auto ran = runTool("/usr/bin/env", {libraryPath, program, daemon.socketPath()});
  INFO(ran.output.cStr());
  CHECK(ran.exitCode == 0);
  CHECK(strstr(ran.output.cStr(), "c-front: all checks passed") != nullptr);

  // The installed vlapicctl runs without LD_LIBRARY_PATH (RUNPATH).
  auto ctl = kj::str(prefix, "/bin/vlapicctl");
  auto status = runTool(ctl, {"--socket", daemon.socketPath(), "status"});
  INFO(status.output.cStr());
  CHECK(status.exitCode == 0);

  // What an operator and a packager need besides the programs: man pages,
  // the systemd units (the service naming the installed vlapicd), the
  // sandbox script, the schema as documentation. (The service names the
  // vlapicd of the prefix configured, not of --prefix here.)
  for (auto file: {"share/man/man8/vlapicd.8", "share/man/man1/vlapicctl.1", "share/man/man1/vlapic-kvm.1",
                   "lib/systemd/system/vlapicd.service", "lib/systemd/system/vlapicd.socket",
                   "libexec/vlapic/vlapicd-sandbox.sh", "share/doc/vlapic/schema/vlapic.capnp",
                   "share/doc/vlapic/schema/channel.capnp"}) {
    INFO(file);
    CHECK(access(kj::str(prefix, "/", file).cStr(), R_OK) == 0);
  }
  CHECK(access(kj::str(prefix, "/libexec/vlapic/vlapicd-sandbox.sh").cStr(), X_OK) == 0);
  auto unit = runTool("/bin/grep", {"^ExecStart=", kj::str(prefix, "/lib/systemd/system/vlapicd.service")});
  INFO(unit.output.cStr());
  CHECK(strstr(unit.output.cStr(), "/bin/vlapicd ") != nullptr);
  auto page = runTool("/usr/bin/env", {"MANWIDTH=80", "man", "-l", kj::str(prefix, "/share/man/man1/vlapicctl.1")});
  if (page.exitCode == 127 || access("/usr/bin/man", X_OK) != 0) {
    WARN("SKIP: man(1) not installed, vlapicctl.1 not rendered");
  } else {
    CHECK(page.exitCode == 0);
    CHECK(strstr(page.output.cStr(), "EXIT STATUS") != nullptr);
  }
}

}  // namespace
}  // namespace vlapic
