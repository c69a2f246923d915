// SPDX-License-Identifier: MIT
// Reading vlapicctl's --json documents in the integration tests with
// capnp's JsonCodec, an independent parser, not with anything of
// vlapicctl's.
#pragma once

#include <capnp/compat/json.h>
#include <capnp/message.h>
#include <catch2/catch.hpp>
#include <kj/debug.h>
#include <kj/string.h>

namespace vlapic::testing {

// One parsed JSON document.
class Json {
public:
  explicit Json(kj::StringPtr text) {
    capnp::JsonCodec codec;
    INFO(text.cStr());
    codec.decodeRaw(text, message.initRoot<capnp::JsonValue>());
  }
  capnp::JsonValue::Reader root() { return message.getRoot<capnp::JsonValue>().asReader(); }

private:
  capnp::MallocMessageBuilder message;
};

// The member `name` of object `value`; fails the test if absent.
inline capnp::JsonValue::Reader member(capnp::JsonValue::Reader value, kj::StringPtr name) {
  INFO(name.cStr());
  REQUIRE(value.isObject());
  for (auto field: value.getObject()) {
    if (field.getName() == name) return field.getValue();
  }
  FAIL("no such field");
  KJ_UNREACHABLE;
}

inline double number(capnp::JsonValue::Reader value, kj::StringPtr name) {
  auto v = member(value, name);
  INFO(name.cStr());
  REQUIRE(v.isNumber());
  return v.getNumber();
}

inline kj::String text(capnp::JsonValue::Reader value, kj::StringPtr name) {
  auto v = member(value, name);
  INFO(name.cStr());
  REQUIRE(v.isString());
  return kj::str(v.getString());
}

inline bool boolean(capnp::JsonValue::Reader value, kj::StringPtr name) {
  auto v = member(value, name);
  INFO(name.cStr());
  REQUIRE(v.isBoolean());
  return v.getBoolean();
}

}  // namespace vlapic::testing
