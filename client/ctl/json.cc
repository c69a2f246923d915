// SPDX-License-Identifier: MIT
#include "client/ctl/json.h"

#include <kj/debug.h>
#include <cinttypes>
#include <cmath>
#include <cstdio>

namespace vlapic::ctl {

void JsonWriter::separate() {
  if (afterKey) {
    afterKey = false;
    return;
  }
  if (hasElement.size() > 0) {
    if (hasElement.back()) text.add(',');
    hasElement.back() = true;
  }
}

JsonWriter& JsonWriter::beginObject() {
  separate();
  text.add('{');
  hasElement.add(false);
  return *this;
}

JsonWriter& JsonWriter::close(char bracket) {
  KJ_REQUIRE(hasElement.size() > 0 && !afterKey, "JSON closed with nothing open, or after a key");
  hasElement.removeLast();
  text.add(bracket);
  return *this;
}

JsonWriter& JsonWriter::endObject() { return close('}'); }

JsonWriter& JsonWriter::beginArray() {
  separate();
  text.add('[');
  hasElement.add(false);
  return *this;
}

JsonWriter& JsonWriter::endArray() { return close(']'); }

JsonWriter& JsonWriter::key(kj::StringPtr name) {
  value(name);
  text.add(':');
  afterKey = true;
  return *this;
}

JsonWriter& JsonWriter::value(kj::StringPtr s) {
  separate();
  text.add('"');
  for (char c: s) {
    unsigned char u = c;
    if (c == '"' || c == '\\') {
      text.add('\\');
      text.add(c);
    } else if (u < 0x20) {
      char escape[8];
      snprintf(escape, sizeof(escape), "\\u%04x", u);
      raw(escape);
    } else {
      text.add(c);   // UTF-8 passes through as is
    }
  }
  text.add('"');
  return *this;
}

JsonWriter& JsonWriter::value(uint64_t number) {
  separate();
  raw(kj::str(number));
  return *this;
}

JsonWriter& JsonWriter::value(int64_t number) {
  separate();
  raw(kj::str(number));
  return *this;
}

JsonWriter& JsonWriter::value(double number) {
  // JSON has no NaN or infinity; a rate is never either unless the
  // interval was zero, which the caller rules out.
  KJ_REQUIRE(std::isfinite(number), number);
  separate();
  char buffer[32];
  snprintf(buffer, sizeof(buffer), "%.3f", number);
  raw(buffer);
  return *this;
}

JsonWriter& JsonWriter::value(bool flag) {
  separate();
  raw(flag ? "true" : "false");
  return *this;
}

JsonWriter& JsonWriter::null() {
  separate();
  raw("null");
  return *this;
}

kj::String JsonWriter::finish() {
  KJ_REQUIRE(hasElement.size() == 0 && !afterKey, "unfinished JSON document");
  text.add('\0');
  return kj::String(text.releaseAsArray());
}

}  // namespace vlapic::ctl
