#include "requests.h"

#include <pybind11/numpy.h>

#include <climits>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>

#include "engine/row/params_check.h"

namespace nucleus::python {
namespace py = pybind11;

namespace {

std::string type_name(py::handle object) {
  return py::str(py::type::handle_of(object).attr("__name__")).cast<std::string>();
}

}  // namespace

bool is_boolean(py::handle v) {
  if (PyBool_Check(v.ptr())) return true;
  // (a 0-d boolean array reads as its element, as numpy's scalar does)
  if (py::isinstance<py::array>(v)) {
    const auto a = py::reinterpret_borrow<py::array>(v);
    return a.ndim() == 0 && a.dtype().kind() == 'b';
  }
  const std::string type = type_name(v);
  return type == "bool_" || type == "bool";  // (numpy's scalar: bool_, numpy 2: bool)
}

namespace {

std::string element(const char* name, int64_t row) {
  return std::string(name) + "[" + std::to_string(row) + "]";
}

bool is_list(py::handle v) { return py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v); }

// Tensors of other libraries (anything numpy can read) are handled like
// numpy arrays. (A plain float, int, bool or None, what most calls pass,
// is told at once, without the three attribute probes.)
bool is_array_like(py::handle v) {
  PyObject* o = v.ptr();
  if (PyFloat_CheckExact(o) || PyLong_CheckExact(o) || PyBool_Check(o) || v.is_none()) {
    return false;
  }
  return py::isinstance<py::array>(v) ||
         (!py::isinstance<py::str>(v) &&
          (has_attr(v, "__array__") || has_attr(v, "__array_interface__") ||
           has_attr(v, "__dlpack__")));
}

}  // namespace

py::array numpy_array(py::handle v) {
  if (py::isinstance<py::array>(v)) return py::reinterpret_borrow<py::array>(v);
  // (an object that speaks DLPack alone: numpy.asarray would wrap it as a
  // 0-d array of one object)
  const bool dlpack_only = PyObject_CheckBuffer(v.ptr()) == 0 && !has_attr(v, "__array__") &&
                           !has_attr(v, "__array_interface__") && has_attr(v, "__dlpack__");
  return py::module_::import("numpy").attr(dlpack_only ? "from_dlpack" : "asarray")(v);
}

py::array as_array(py::handle v, const std::string& where) {
  try {
    return numpy_array(v);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_ValueError)) throw;
    // (numpy's own message, a ragged list's, named by the keyword)
    throw py::value_error(where + ": " + py::str(e.value()).cast<std::string>());
  }
}

namespace {

std::string shape_text(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

double to_double(py::handle v, const std::string& where) {
  if (is_boolean(v)) throw py::type_error(where + ": expected a number, got bool");
  if (py::isinstance<py::str>(v) || py::isinstance<py::bytes>(v)) {
    throw py::type_error(where + ": expected a number, got " + type_name(v));
  }
  // (an array of one element would pass as its element through __float__)
  if (py::isinstance<py::array>(v) && py::reinterpret_borrow<py::array>(v).ndim() > 0) {
    throw py::type_error(where + ": expected a number, got an array of shape " +
                         shape_text(py::reinterpret_borrow<py::array>(v)));
  }
  const double x = PyFloat_AsDouble(v.ptr());
  if (x == -1.0 && PyErr_Occurred() != nullptr) {
    const bool overflow = PyErr_ExceptionMatches(PyExc_OverflowError) != 0;
    PyErr_Clear();
    if (overflow) {  // an int past a double's range
      std::string text = py::str(v).cast<std::string>();
      if (text.size() > 24) text = text.substr(0, 12) + "..." + text.substr(text.size() - 8);
      throw py::value_error(where + ": " + text + " is too large for a double");
    }
    throw py::type_error(where + ": expected a number, got " + type_name(v));
  }
  return x;
}

float to_float(py::handle v, const std::string& where) {
  // Narrowed once from the double Python holds, as the command-line tool
  // does with its JSON numbers, so both give the engine the same float; one
  // past float's range is refused by its own spelling, not later as "inf",
  // and so is one below it, not taken as 0 (a temperature of 0 is greedy).
  const double x = to_double(v, where);
  if (const std::string why = nucleus::detail::float32_range_error(x); !why.empty()) {
    throw py::value_error(where + " = " + py::str(py::float_(x)).cast<std::string>() + " " + why);
  }
  return static_cast<float>(x);
}

}  // namespace

std::optional<uint64_t> first_past_int64(const py::array& a) {
  if (a.dtype().kind() != 'u' || a.itemsize() != 8) return std::nullopt;
  auto u = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!u) throw py::error_already_set();
  for (py::ssize_t i = 0; i < u.size(); ++i) {
    if (u.data()[i] > static_cast<uint64_t>(INT64_MAX)) return u.data()[i];
  }
  return std::nullopt;
}

py::object to_index(py::handle v, const std::string& where) {
  if (is_boolean(v)) throw py::type_error(where + ": expected an integer, got bool");
  PyObject* index = PyNumber_Index(v.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    throw py::type_error(where + ": expected an integer, got " + type_name(v));
  }
  return py::reinterpret_steal<py::object>(index);
}

namespace {

// The integer v is, refused by its own spelling outside [lo, hi] (named
// `type`), however large.
int64_t to_integer(py::handle v, const std::string& where, int64_t lo, int64_t hi,
                   const char* type) {
  py::object index = to_index(v, where);
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0 || x < lo || x > hi) {
    throw py::value_error(where + " = " + py::str(index).cast<std::string>() + " does not fit in " +
                          type);
  }
  return x;
}

}  // namespace

int64_t to_int64(py::handle v, const std::string& where) {
  return to_integer(v, where, INT64_MIN, INT64_MAX, "int64");
}

int32_t to_int32(py::handle v, const std::string& where) {
  return static_cast<int32_t>(to_integer(v, where, INT32_MIN, INT32_MAX, "int32"));
}

uint64_t to_uint64(py::handle v, const std::string& where) {
  py::object index = to_index(v, where);
  const unsigned long long x = PyLong_AsUnsignedLongLong(index.ptr());
  if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred() != nullptr) {
    PyErr_Clear();
    throw py::value_error(where + " = " + py::str(index).cast<std::string>() +
                          " is outside [0, 2**64)");
  }
  return x;
}

namespace {

// One keyword's value: either one value for every row or a sequence of one
// value per row (a list, a tuple or a 1-D array). None means the default.
struct RowValues {
  py::object scalar;  // one value for every row (None: the default)
  py::list per_row;   // else, one per row
  bool is_per_row = false;
};

RowValues row_values(const char* name, py::handle value, int64_t rows) {
  RowValues v;
  py::object seq;
  if (is_list(value)) {
    seq = py::reinterpret_borrow<py::object>(value);
  } else if (is_array_like(value)) {
    py::array a = numpy_array(value);
    if (a.ndim() == 0) {
      v.scalar = a.attr("item")();
      return v;
    }
    if (a.ndim() != 1) {
      throw py::value_error(std::string(name) + ": expected a scalar or a 1-D per-row array, got " +
                            "shape " + shape_text(a));
    }
    seq = a.attr("tolist")();
  } else {
    v.scalar = py::reinterpret_borrow<py::object>(value);
    return v;
  }
  v.per_row = py::list(seq);
  v.is_per_row = true;
  if (static_cast<int64_t>(v.per_row.size()) != rows) {
    throw py::value_error(std::string(name) + ": expected one value or " + std::to_string(rows) +
                          " per-row values, got " + std::to_string(v.per_row.size()));
  }
  return v;
}

// Calls set(row, value) for every row whose value is not None.
template <typename T, typename Convert, typename Set>
void for_rows(const char* name, py::handle value, int64_t rows, Convert convert, Set set) {
  if (value.is_none()) return;
  RowValues v = row_values(name, value, rows);
  if (!v.is_per_row) {
    if (v.scalar.is_none()) return;
    const T x = convert(v.scalar, std::string(name));
    for (int64_t r = 0; r < rows; ++r) set(r, x);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    py::handle item = v.per_row[static_cast<size_t>(r)];
    if (item.is_none()) continue;
    set(r, convert(item, element(name, r)));
  }
}

Preset to_preset(py::handle v, const std::string& where) {
  if (!py::isinstance<py::str>(v)) {
    throw py::type_error(where + ": expected 'hf', 'vllm' or 'llama.cpp', got " + type_name(v));
  }
  const std::string name = v.cast<std::string>();
  std::optional<Preset> preset = parse_preset(name);
  if (!preset) {
    throw py::value_error(where + " = '" + name + "' is not one of 'hf', 'vllm', 'llama.cpp'");
  }
  return *preset;
}

LogprobsMode to_logprobs_mode(py::handle v, const std::string& where) {
  if (!py::isinstance<py::str>(v)) {
    throw py::type_error(where + ": expected 'processed' or 'raw', got " + type_name(v));
  }
  const std::string name = v.cast<std::string>();
  if (name == "processed") return LogprobsMode::kProcessed;
  if (name == "raw") return LogprobsMode::kRaw;
  throw py::value_error(where + " = '" + name + "' is not one of 'processed', 'raw'");
}

// `logprobs`: a number asks for that many top log-probabilities (vLLM's
// meaning) besides the sampled tokens' own; a boolean is the OpenAI API's
// flag: True asks for the sampled tokens' log-probabilities (the default),
// False for none at all, which spares a row the raw normaliser's exp pass.
struct LogprobsArg {
  bool sampled = true;
  int32_t top = 0;
};
LogprobsArg to_logprobs(py::handle v, const std::string& where) {
  if (is_boolean(v)) return LogprobsArg{PyObject_IsTrue(v.ptr()) == 1, 0};
  return LogprobsArg{true, to_int32(v, where)};
}

// A row's own list (as opposed to one token id of a list shared by every
// row). Numpy integer scalars and 0-d tensors are array-like but are ids.
bool is_token_row(py::handle v) {
  if (v.is_none() || is_list(v)) return true;
  if (!is_array_like(v)) return false;
  return numpy_array(v).ndim() >= 1;
}

std::vector<int32_t> to_tokens(py::handle v, const std::string& where) {
  std::vector<int32_t> out;
  if (v.is_none()) return out;
  py::object seq;
  if (is_list(v)) {
    seq = py::reinterpret_borrow<py::object>(v);
  } else if (is_array_like(v)) {
    py::array a = numpy_array(v);
    if (a.ndim() != 1) {
      throw py::value_error(where + ": expected a 1-D list of token ids, got shape " +
                            shape_text(a));
    }
    seq = a.attr("tolist")();
  } else {
    throw py::type_error(where + ": expected a list of token ids, got " + type_name(v));
  }
  py::list list(seq);
  out.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    out.push_back(to_int32(list[i], where + "[" + std::to_string(i) + "]"));
  }
  return out;
}

// The keyword a request field is set by ("num_samples" is n).
std::string_view keyword_of(std::string_view field) {
  static constexpr std::pair<std::string_view, std::string_view> kNames[] = {
      {"num_samples", "n"},
      {"top_logprobs", "logprobs"},
      {"generated_tokens", "history"},
      {"prompt_tokens", "prompt"},
      {"banned_tokens", "banned"}};
  for (const auto& [from, to] : kNames) {
    if (field == from) return to;
  }
  return field;
}

}  // namespace

// Fills a RequestTable; a friend so that it can own the storage the spans
// point to.
class RequestParser {
 public:
  RequestParser(RequestTable* table, int64_t rows, int64_t vocab)
      : t_(table), rows_(rows), vocab_(vocab) {}

  RowRequest& row(int64_t r) { return t_->requests_[static_cast<size_t>(r)]; }

  std::span<const int32_t> store(std::vector<int32_t> tokens) {
    t_->tokens_.push_back(std::move(tokens));
    return t_->tokens_.back();
  }

  // history, prompt, banned: one list for every row, or a list of lists (or
  // a 2-D array) with one list per row.
  template <typename Set>
  void token_lists(const char* name, py::handle value, Set set) {
    if (value.is_none()) return;
    py::object per_row;
    if (is_list(value)) {
      py::sequence seq = py::reinterpret_borrow<py::sequence>(value);
      size_t nested = 0;
      for (py::handle item : seq) nested += is_token_row(item) ? 1 : 0;
      if (nested != 0 && nested != seq.size()) {
        throw py::type_error(std::string(name) +
                             ": mixes token ids and lists; give one list for every row or one "
                             "list per row");
      }
      if (nested != 0) per_row = py::reinterpret_borrow<py::object>(value);
    } else if (is_array_like(value)) {
      py::array a = numpy_array(value);
      if (a.ndim() == 2) {
        per_row = a.attr("tolist")();
      } else if (a.ndim() != 1) {
        throw py::value_error(std::string(name) +
                              ": expected a 1-D array (every row) or a 2-D array (one row each), "
                              "got shape " +
                              shape_text(a));
      }
    } else {
      throw py::type_error(std::string(name) + ": expected a list of token ids, got " +
                           type_name(value));
    }
    if (!per_row) {
      std::span<const int32_t> shared = store(to_tokens(value, name));
      for (int64_t r = 0; r < rows_; ++r) set(r, shared);
      return;
    }
    py::list list(per_row);
    if (static_cast<int64_t>(list.size()) != rows_) {
      throw py::value_error(std::string(name) + ": expected one list for every row or " +
                            std::to_string(rows_) + " per-row lists, got " +
                            std::to_string(list.size()));
    }
    for (int64_t r = 0; r < rows_; ++r) {
      set(r, store(to_tokens(list[static_cast<size_t>(r)], element(name, r))));
    }
  }

  std::span<const TokenBias> biases(py::handle dict, const std::string& where) {
    if (!py::isinstance<py::dict>(dict)) {
      throw py::type_error(where + ": expected a dict {token: bias}, got " + type_name(dict));
    }
    std::vector<TokenBias> out;
    for (auto [key, value] : py::reinterpret_borrow<py::dict>(dict)) {
      const std::string at = where + "[" + py::repr(key).cast<std::string>() + "]";
      int32_t token = 0;
      if (py::isinstance<py::str>(key)) {
        // OpenAI-style JSON keys: {"50256": -100}, spelled as the
        // command-line tool's must be (Python's int() would also take " 5 ",
        // "0_5" and other scripts' digits).
        if (!nucleus::detail::is_token_key(key.cast<std::string>())) {
          throw py::type_error(at + ": the key is not a token id");
        }
        token = to_int32(py::int_(py::reinterpret_borrow<py::object>(key)), at);
      } else {
        token = to_int32(key, at);
      }
      out.push_back(TokenBias{token, to_float(value, at)});
    }
    t_->biases_.push_back(std::move(out));
    return t_->biases_.back();
  }

  void logit_bias(py::handle value) {
    if (value.is_none()) return;
    if (py::isinstance<py::dict>(value)) {
      std::span<const TokenBias> shared = biases(value, "logit_bias");
      for (int64_t r = 0; r < rows_; ++r) row(r).logit_bias = shared;
      return;
    }
    if (!is_list(value)) {
      throw py::type_error(
          "logit_bias: expected a dict {token: bias} or a list of one dict (or None) per row, "
          "got " +
          type_name(value));
    }
    py::list list(py::reinterpret_borrow<py::object>(value));
    if (static_cast<int64_t>(list.size()) != rows_) {
      throw py::value_error("logit_bias: expected one dict or " + std::to_string(rows_) +
                            " per-row dicts, got " + std::to_string(list.size()));
    }
    for (int64_t r = 0; r < rows_; ++r) {
      py::handle item = list[static_cast<size_t>(r)];
      if (!item.is_none()) row(r).logit_bias = biases(item, element("logit_bias", r));
    }
  }

  // Packed words as the engine wants them: from int32 / uint32 words, from
  // other integer words that fit 32 bits, or from a boolean mask over the
  // vocabulary. One 1-D mask for every row, a 2-D array with a row each, or
  // a list with an entry per row in which None means no mask for that row.
  void allowed_mask(py::handle value) {
    if (value.is_none()) return;
    auto check_type = [](py::handle v, const std::string& name) {
      if (!is_list(v) && !is_array_like(v)) {
        throw py::type_error(name +
                             ": expected packed words or a boolean mask (a list or an array), "
                             "got " +
                             type_name(v));
      }
    };
    check_type(value, "allowed_mask");
    if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
      const py::sequence items = py::reinterpret_borrow<py::sequence>(value);
      bool any_none = false;
      for (const py::handle item : items) any_none |= item.is_none();
      if (any_none) {
        if (static_cast<int64_t>(items.size()) != rows_) {
          throw py::value_error("allowed_mask: a list with None needs one entry per row (" +
                                std::to_string(rows_) + "), got " + std::to_string(items.size()));
        }
        for (int64_t r = 0; r < rows_; ++r) {
          const py::object item = items[static_cast<size_t>(r)];
          if (item.is_none()) continue;
          const std::string name = "allowed_mask[" + std::to_string(r) + "]";
          check_type(item, name);
          py::array a = as_array(item, name);
          if (a.ndim() != 1) {
            throw py::value_error(name + ": expected a 1-D array, got shape " + shape_text(a));
          }
          int64_t words_per_row = 0;
          row(r).allowed_mask = packed(a, name, 1, &words_per_row);
        }
        return;
      }
    }
    py::array a = as_array(value, "allowed_mask");
    if (a.ndim() != 1 && a.ndim() != 2) {
      throw py::value_error(
          "allowed_mask: expected a 1-D array (every row) or a 2-D array (one row each), got "
          "shape " +
          shape_text(a));
    }
    const bool per_row = a.ndim() == 2;
    if (per_row && a.shape(0) != rows_) {
      throw py::value_error("allowed_mask: expected " + std::to_string(rows_) +
                            " rows, got shape " + shape_text(a));
    }
    int64_t words_per_row = 0;
    const std::span<const int32_t> all =
        packed(a, "allowed_mask", per_row ? rows_ : 1, &words_per_row);
    for (int64_t r = 0; r < rows_; ++r) {
      row(r).allowed_mask = all.subspan(static_cast<size_t>((per_row ? r : 0) * words_per_row),
                                        static_cast<size_t>(words_per_row));
    }
  }

 private:
  // The words of `mask_rows` masks, the last axis of `a` (named `name` in
  // errors), kept in the table; *words_per_row gets each mask's length.
  std::span<const int32_t> packed(const py::array& a, const std::string& name, int64_t mask_rows,
                                  int64_t* words_per_row) {
    const int64_t width = a.shape(a.ndim() - 1);
    if (width == 0) {
      // An empty span means "no mask" to the engine: refuse it rather than
      // allow every token.
      throw py::value_error(name + ": expected ceil(vocab/32) words per row, got none");
    }
    const char kind = a.dtype().kind();
    std::vector<int32_t> words;
    *words_per_row = width;
    if (kind == 'b') {
      if (width != vocab_) {
        throw py::value_error(name + ": a boolean mask needs vocab = " + std::to_string(vocab_) +
                              " entries per row, got " + std::to_string(width));
      }
      *words_per_row = (vocab_ + 31) / 32;
      auto bits = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(a);
      words.assign(static_cast<size_t>(mask_rows * *words_per_row), 0);
      const bool* b = bits.data();
      for (int64_t r = 0; r < mask_rows; ++r) {
        for (int64_t i = 0; i < vocab_; ++i) {
          if (b[r * vocab_ + i]) {
            words[static_cast<size_t>(r * *words_per_row + i / 32)] |=
                static_cast<int32_t>(uint32_t{1} << (i % 32));
          }
        }
      }
    } else if ((kind == 'i' || kind == 'u') && a.itemsize() == 4) {
      // (the bits as they are, uint32 too; in native byte order first)
      const py::object native = a.attr("astype")(a.dtype().attr("newbyteorder")("="));
      auto w = py::array_t<int32_t, py::array::c_style>::ensure(
          py::module_::import("numpy").attr("ascontiguousarray")(native).attr("view")("int32"));
      words.assign(w.data(), w.data() + w.size());
    } else if (kind == 'i' || kind == 'u') {
      if (const std::optional<uint64_t> big = first_past_int64(a)) {
        throw py::value_error(name + ": word " + std::to_string(*big) + " does not fit in 32 bits");
      }
      auto w = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
      if (!w) throw py::value_error(name + ": words do not fit in 64 bits");
      words.reserve(static_cast<size_t>(w.size()));
      for (py::ssize_t i = 0; i < w.size(); ++i) {
        const int64_t x = w.data()[i];
        if (x < INT32_MIN || x > int64_t{UINT32_MAX}) {
          throw py::value_error(name + ": word " + std::to_string(x) + " does not fit in 32 bits");
        }
        words.push_back(static_cast<int32_t>(static_cast<uint32_t>(x)));
      }
    } else {
      throw py::type_error(name +
                           ": expected 32-bit words (int32 / uint32, ceil(vocab/32) "
                           "per row) or a boolean mask over the vocabulary, got dtype " +
                           py::str(a.dtype()).cast<std::string>());
    }
    return store(std::move(words));
  }

  RequestTable* t_;
  int64_t rows_;
  int64_t vocab_;
};

void RequestTable::check(int64_t vocab) const {
  // (logits the engine refuses: its call error comes first, as it would)
  if (vocab <= 0) return;
  for (size_t r = 0; r < requests_.size(); ++r) {
    if (auto e = detail::find_request_error(requests_[r], vocab)) {
      const std::string prefix = "row " + std::to_string(r) + ": ";
      throw py::value_error(detail::field_status(prefix, keyword_of(e->field), *e).message());
    }
  }
}

const std::vector<const char*>& keyword_names(CallKind kind) {
  static const std::vector<const char*> kCommon = {"temperature",
                                                   "top_k",
                                                   "top_p",
                                                   "min_p",
                                                   "typical_p",
                                                   "top_n_sigma",
                                                   "min_keep",
                                                   "repetition_penalty",
                                                   "frequency_penalty",
                                                   "presence_penalty",
                                                   "preset",
                                                   "seed",
                                                   "step",
                                                   "history",
                                                   "prompt",
                                                   "logit_bias",
                                                   "banned",
                                                   "allowed_mask"};
  static const std::vector<const char*> kSample = [] {
    std::vector<const char*> names = kCommon;
    names.insert(names.end(), {"n", "logprobs", "logprobs_mode"});
    return names;
  }();
  return kind == CallKind::kSample ? kSample : kCommon;
}

RequestTable RequestTable::from_kwargs(const py::dict& kwargs, int64_t rows, int64_t vocab,
                                       CallKind kind, const char* function) {
  const std::vector<const char*>& names = keyword_names(kind);
  for (auto item : kwargs) {
    const std::string key = py::str(item.first).cast<std::string>();
    bool known = false;
    for (const char* name : names) known = known || key == name;
    if (!known) {
      const bool draw = key == "n" || key == "logprobs" || key == "logprobs_mode";
      throw py::type_error(std::string(function) + "() got an unexpected keyword argument '" + key +
                           "'" + (draw ? " (it applies to sample() only)" : ""));
    }
  }
  auto arg = [&](const char* name) -> py::object {
    return kwargs.contains(name) ? py::reinterpret_borrow<py::object>(kwargs[name]) : py::none();
  };

  RequestTable table;
  table.requests_.resize(static_cast<size_t>(rows > 0 ? rows : 0));
  RequestParser parser(&table, rows, vocab);
  auto params = [&](int64_t r) -> SamplingParams& { return parser.row(r).params; };

  for_rows<float>("temperature", arg("temperature"), rows, to_float,
                  [&](int64_t r, float x) { params(r).temperature = x; });
  for_rows<int32_t>("top_k", arg("top_k"), rows, to_int32,
                    [&](int64_t r, int32_t x) { params(r).top_k = x; });
  for_rows<float>("top_p", arg("top_p"), rows, to_float,
                  [&](int64_t r, float x) { params(r).top_p = x; });
  for_rows<float>("min_p", arg("min_p"), rows, to_float,
                  [&](int64_t r, float x) { params(r).min_p = x; });
  for_rows<float>("typical_p", arg("typical_p"), rows, to_float,
                  [&](int64_t r, float x) { params(r).typical_p = x; });
  for_rows<float>("top_n_sigma", arg("top_n_sigma"), rows, to_float,
                  [&](int64_t r, float x) { params(r).top_n_sigma = x; });
  for_rows<int32_t>("min_keep", arg("min_keep"), rows, to_int32,
                    [&](int64_t r, int32_t x) { params(r).min_keep = x; });
  for_rows<float>("repetition_penalty", arg("repetition_penalty"), rows, to_float,
                  [&](int64_t r, float x) { params(r).repetition_penalty = x; });
  for_rows<float>("frequency_penalty", arg("frequency_penalty"), rows, to_float,
                  [&](int64_t r, float x) { params(r).frequency_penalty = x; });
  for_rows<float>("presence_penalty", arg("presence_penalty"), rows, to_float,
                  [&](int64_t r, float x) { params(r).presence_penalty = x; });
  for_rows<Preset>("preset", arg("preset"), rows, to_preset,
                   [&](int64_t r, Preset x) { params(r).preset = x; });

  // A single seed S gives row r the seed S + r (modulo 2**64), as the
  // command-line tool does: rows with equal logits then still differ.
  py::object seed = arg("seed");
  if (!seed.is_none()) {
    RowValues v = row_values("seed", seed, rows);
    if (!v.is_per_row) {
      if (!v.scalar.is_none()) {
        const uint64_t base = to_uint64(v.scalar, "seed");
        for (int64_t r = 0; r < rows; ++r) parser.row(r).seed = base + static_cast<uint64_t>(r);
      }
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        py::handle item = v.per_row[static_cast<size_t>(r)];
        if (!item.is_none()) parser.row(r).seed = to_uint64(item, element("seed", r));
      }
    }
  }
  for_rows<uint64_t>("step", arg("step"), rows, to_uint64,
                     [&](int64_t r, uint64_t x) { parser.row(r).step = x; });

  parser.token_lists("history", arg("history"), [&](int64_t r, std::span<const int32_t> s) {
    parser.row(r).generated_tokens = s;
  });
  parser.token_lists("prompt", arg("prompt"), [&](int64_t r, std::span<const int32_t> s) {
    parser.row(r).prompt_tokens = s;
  });
  parser.token_lists("banned", arg("banned"), [&](int64_t r, std::span<const int32_t> s) {
    parser.row(r).banned_tokens = s;
  });
  parser.logit_bias(arg("logit_bias"));
  parser.allowed_mask(arg("allowed_mask"));

  if (kind == CallKind::kSample) {
    for_rows<int32_t>("n", arg("n"), rows, to_int32,
                      [&](int64_t r, int32_t x) { params(r).num_samples = x; });
    for_rows<LogprobsArg>("logprobs", arg("logprobs"), rows, to_logprobs,
                          [&](int64_t r, LogprobsArg x) {
                            params(r).logprobs = x.sampled;
                            params(r).top_logprobs = x.top;
                          });
    for_rows<LogprobsMode>("logprobs_mode", arg("logprobs_mode"), rows, to_logprobs_mode,
                           [&](int64_t r, LogprobsMode x) { params(r).logprobs_mode = x; });
  }
  for (const RowRequest& req : table.requests_) {
    table.max_samples_ = std::max(table.max_samples_, req.params.num_samples);
    table.max_top_logprobs_ = std::max(table.max_top_logprobs_, req.params.top_logprobs);
  }
  return table;
}

}  // namespace nucleus::python
