#include "engine/io/json_text.h"

#include <set>
#include <vector>

namespace nucleus::detail {
namespace {

using Json = nlohmann::json;

constexpr int kShownDepth = 32;

// Thrown from the parser callback to stop at a repeated key.
struct RepeatedKey {
  std::string key;
};

// nlohmann's message less its "[json.exception.parse_error.101] " tag and,
// for a parse error, its "parse error at line 1, column 11: " (the column is
// given as a byte offset, e.byte).
std::string reason(const Json::exception& e) {
  std::string what = e.what();
  if (const size_t tag = what.find("] ");
      what.starts_with("[json.exception.") && tag != std::string::npos) {
    what.erase(0, tag + 2);
  }
  if (what.starts_with("parse error")) {
    if (const size_t colon = what.find(": "); colon != std::string::npos) what.erase(0, colon + 2);
  }
  return what;
}

bool deeper_than(const Json& v, int depth) {
  if (!v.is_structured()) return false;
  if (depth == 0) return true;
  for (const Json& e : v) {
    if (deeper_than(e, depth - 1)) return true;
  }
  return false;
}

}  // namespace

bool parse_json(std::string_view text, Json* out, std::string* error) {
  // One set of keys per object being read, innermost last.
  std::vector<std::set<std::string>> keys;
  const Json::parser_callback_t check = [&keys](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys.back().insert(parsed.get<std::string>()).second) {
          throw RepeatedKey{parsed.get<std::string>()};
        }
        break;
      default:
        break;
    }
    return true;
  };
  // nlohmann's reader takes a NUL byte between tokens for the end of the
  // text (as in a C string) and would ignore whatever follows it, an unknown
  // key or a second tensor: refused here.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    *error = "not valid JSON at column " + std::to_string(nul + 1) + ": a NUL byte";
    return false;
  }
  try {
    *out = Json::parse(text.data(), text.data() + text.size(), check);
    return true;
  } catch (const RepeatedKey& r) {
    *error = "key " + json_shown(Json(r.key)) + " appears twice in one object";
  } catch (const Json::parse_error& e) {
    *error = "not valid JSON at column " + std::to_string(e.byte) + ": " + reason(e);
  } catch (const Json::exception& e) {
    *error = "not valid JSON: " + reason(e);
  }
  return false;
}

std::string shown_text(std::string_view text, size_t max_chars) {
  std::string out = escape_controls(text.substr(0, max_chars), /*backslashes=*/true);
  if (text.size() > max_chars) out += "...";
  return out;
}

std::string escape_controls(std::string_view text, bool backslashes) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\' && backslashes) {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

std::string json_shown(const Json& value) {
  if (deeper_than(value, kShownDepth)) {
    return std::string("(a JSON ") + value.type_name() + " nested more than " +
           std::to_string(kShownDepth) + " levels deep)";
  }
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 120) text = text.substr(0, 120) + "...";
  return text;
}

}  // namespace nucleus::detail
