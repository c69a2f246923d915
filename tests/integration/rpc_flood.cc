// SPDX-License-Identifier: MIT
#include "rpc_flood.h"

#include "schema/vlapic.capnp.h"

#include <capnp/message.h>
#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace vlapic::testing {

kj::Array<kj::byte> echoFloodMessages(uint32_t calls) {
  kj::Vector<kj::byte> out;
  auto append = [&](capnp::MessageBuilder& message) {
    auto words = capnp::messageToFlatArray(message);
    out.addAll(words.asBytes());
  };
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<capnp::rpc::Message>().initBootstrap().setQuestionId(0);
    append(message);
  }
  for (uint32_t q = 1; q <= calls; q++) {
    capnp::MallocMessageBuilder message;
    auto call = message.initRoot<capnp::rpc::Message>().initCall();
    call.setQuestionId(q);
    call.initTarget().initPromisedAnswer().setQuestionId(0);
    call.setInterfaceId(capnp::typeId<proto::Service>());
    call.setMethodId(0);   // Service.echo
    call.initParams().getContent().initAs<proto::Service::EchoParams>().setValue(q);
    append(message);
  }
  return out.releaseAsArray();
}

size_t writeWithoutReading(kj::StringPtr socketPath, kj::ArrayPtr<const kj::byte> bytes,
                           double seconds, int* fdOut) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  KJ_SYSCALL(fd);
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  KJ_REQUIRE(socketPath.size() < sizeof(address.sun_path));
  memcpy(address.sun_path, socketPath.cStr(), socketPath.size() + 1);
  KJ_SYSCALL(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)));
  *fdOut = fd;
  size_t written = 0;
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (written < bytes.size() && std::chrono::steady_clock::now() < end) {
    ssize_t n = send(fd, bytes.begin() + written, bytes.size() - written, MSG_NOSIGNAL);
    if (n > 0) {
      written += n;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      struct pollfd ready = {fd, POLLOUT, 0};
      poll(&ready, 1, 20);
    } else {
      break;   // the server hung up
    }
  }
  return written;
}

}  // namespace vlapic::testing
