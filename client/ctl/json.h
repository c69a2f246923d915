// SPDX-License-Identifier: MIT
// A small JSON writer for vlapicctl's --json output. Written rather than
// taken from capnp's JsonCodec because that one holds every number as a
// double: a 64-bit counter or deadline above 2^53 would come out rounded.
#pragma once

#include <kj/string.h>
#include <kj/vector.h>
#include <cstdint>

namespace vlapic::ctl {

// Appends values in document order; commas and quoting are its business.
// Inside an object each value follows a key().
class JsonWriter {
public:
  JsonWriter& beginObject();
  JsonWriter& endObject();
  JsonWriter& beginArray();
  JsonWriter& endArray();
  JsonWriter& key(kj::StringPtr name);

  JsonWriter& value(kj::StringPtr text);
  JsonWriter& value(const char* text) { return value(kj::StringPtr(text)); }
  JsonWriter& value(uint64_t number);
  JsonWriter& value(uint32_t number) { return value(uint64_t(number)); }
  JsonWriter& value(int64_t number);
  JsonWriter& value(double number);
  JsonWriter& value(bool flag);
  JsonWriter& null();
  template <typename T>
  JsonWriter& value(const kj::Maybe<T>& maybe) {
    KJ_IF_MAYBE(v, maybe) return value(*v);
    return null();
  }

  // The shorthand for the common case.
  template <typename T>
  JsonWriter& field(kj::StringPtr name, T&& v) { return key(name).value(kj::fwd<T>(v)); }

  // The document, on one line.
  kj::String finish();

private:
  kj::Vector<char> text;
  // Per open object or array: whether it has an element yet.
  kj::Vector<bool> hasElement;
  bool afterKey = false;

  void separate();
  JsonWriter& close(char bracket);
  void raw(kj::StringPtr part) { text.addAll(part); }
};

}  // namespace vlapic::ctl
