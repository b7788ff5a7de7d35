// The Python module `nucleus`: Engine.sample / probs / verify over numpy
// arrays, buffer-protocol objects and DLPack tensors, and load_dump.
// docs/python.md describes the API and the decisions behind it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cxxabi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "logits_input.h"
#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "requests.h"

namespace nucleus::python {
namespace py = pybind11;
namespace {

[[noreturn]] void throw_status(const Status& status) {
  PyObject* type = PyExc_RuntimeError;
  if (status.code() == StatusCode::kInvalidArgument) type = PyExc_ValueError;
  if (status.code() == StatusCode::kIoError) type = PyExc_OSError;
  // A message may quote bytes of a malformed file that are not UTF-8: show
  // them escaped rather than lose the message.
  const std::string& m = status.message();
  PyObject* text =
      PyUnicode_DecodeUTF8(m.data(), static_cast<Py_ssize_t>(m.size()), "backslashreplace");
  if (text == nullptr) throw py::error_already_set();
  PyErr_SetObject(type, text);
  Py_DECREF(text);
  throw py::error_already_set();
}

// The GIL, taken back after a call that ran without it. When the
// interpreter is finalizing (a daemon thread whose call ends as the program
// exits), PyEval_RestoreThread ends the thread by pthread_exit (Python
// 3.11-3.13), whose unwinding out of py::gil_scoped_release's destructor
// (noexcept) called std::terminate: an abort at exit; and unwinding on
// through the call's frames would drop references without the GIL while
// the interpreter is torn down. Such a thread waits for the process to end
// instead, as Python 3.14 makes every such thread do: when finalizing has
// begun before the wait for the GIL, and when it begins during it (the
// forced unwind is caught where it starts and never resumed).
[[noreturn]] void wait_for_the_end() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

void take_gil_back(PyThreadState* state) {
#if PY_VERSION_HEX >= 0x030D0000
  if (Py_IsFinalizing() != 0) wait_for_the_end();
#else
  if (_Py_IsFinalizing() != 0) wait_for_the_end();
#endif
  try {
    PyEval_RestoreThread(state);
  } catch (abi::__forced_unwind&) {
    wait_for_the_end();
  }
}

// Runs fn() with the GIL released (the engine's calls, file reads), taking
// it back in the normal flow rather than in a destructor (above); a throw
// takes it back on the way out.
template <typename Fn>
void without_gil(Fn&& fn) {
  struct Released {
    PyThreadState* state = PyEval_SaveThread();
    Released() = default;
    Released(const Released&) = delete;
    Released& operator=(const Released&) = delete;
    ~Released() {
      if (state) take_gil_back(state);
    }
  } released;
  fn();
  take_gil_back(std::exchange(released.state, nullptr));
}

// Removes a keyword handled outside the request table.
py::object pop(py::kwargs& kwargs, const char* name) {
  return kwargs.attr("pop")(name, py::none());
}

template <typename T>
py::array_t<T> filled(std::vector<py::ssize_t> shape, T value) {
  py::array_t<T> a(shape);
  T* p = a.mutable_data();
  for (py::ssize_t i = 0; i < a.size(); ++i) p[i] = value;
  return a;
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A call's result vector, reused by the calls on one thread (the results
// keep their capacity, so a steady decode loop does not allocate inside the
// engine). It is taken out of the thread's slot for the call and put back
// after: building the Python results can run Python code (a garbage
// collection, a finaliser) that calls the module again on this thread, and
// that call must get a vector of its own, not overwrite this one.
template <typename T>
class ReusedResults {
 public:
  explicit ReusedResults(int64_t rows) : v_(std::move(slot())) {
    slot().clear();
    v_.resize(static_cast<size_t>(std::max<int64_t>(rows, 0)));
  }
  ~ReusedResults() { slot() = std::move(v_); }
  ReusedResults(const ReusedResults&) = delete;
  ReusedResults& operator=(const ReusedResults&) = delete;

  std::vector<T>& get() { return v_; }

 private:
  static std::vector<T>& slot() {
    thread_local std::vector<T> kept;
    return kept;
  }
  std::vector<T> v_;
};

// What Engine.sample returns: numpy arrays, one row per logit row.
struct SampleResult {
  py::array_t<int32_t> tokens;      // [rows, n], -1 where a row has fewer samples
  py::array_t<float> logprobs;      // [rows, n], NaN padding
  py::array_t<float> raw_logprobs;  // [rows, n], NaN padding
  py::array_t<int64_t> support;     // [rows]
  py::array_t<int32_t> ranks;       // [rows, n], -1 where not computed
  py::array_t<int32_t> top_tokens;  // [rows, N], -1 padding
  py::array_t<float> top_logprobs;  // [rows, N], -inf padding
  py::list errors;                  // None or the row's message
};

// What Engine.verify returns; unpacks as (accepted, tokens).
struct VerifyOutput {
  py::array_t<int32_t> accepted;  // [rows], -1 for a row error
  py::array_t<int32_t> tokens;    // [rows, K + 1], -1 padding
  py::list errors;
};

// No rows is the engine's call error; said before the per-row arguments are
// counted against the rows (their message would blame them).
void check_has_rows(const LogitsView& view) {
  if (view.rows <= 0) {
    throw py::value_error("logits: rows = " + std::to_string(view.rows) + " must be > 0");
  }
}

// A text argument (a str: not bytes, which the string caster would take),
// or TypeError naming it and its value.
std::string text_argument(const char* name, const py::object& value) {
  if (!py::isinstance<py::str>(value)) {
    throw py::type_error(std::string(name) + " = " + py::repr(value).cast<std::string>() +
                         ": expected a string");
  }
  return value.cast<std::string>();
}

class PyEngine {
 public:
  PyEngine(const py::object& threads, const py::object& seed, const py::object& isa,
           const py::object& read_ahead)
      : engine_(options(threads, seed, text_argument("isa", isa),
                        text_argument("read_ahead", read_ahead))) {}

  int max_threads() const { return engine_.max_threads(); }
  std::string isa() const { return isa_name(engine_.isa()); }
  std::string read_ahead() const { return read_ahead_name(engine_.read_ahead()); }

  SampleResult sample(py::handle logits, py::kwargs kwargs) {
    const bool bf16 = parse_logits_dtype(pop(kwargs, "logits_dtype"));
    LogitsInput in = LogitsInput::from_object(logits, "logits", bf16);
    const LogitsView& view = in.view();
    check_has_rows(view);
    RequestTable table =
        RequestTable::from_kwargs(kwargs, view.rows, view.vocab, CallKind::kSample, "sample");
    table.check(view.vocab);
    ReusedResults<RowResult> reused(view.rows);
    std::vector<RowResult>& results = reused.get();
    Status status;
    without_gil([&] { status = engine_.sample(view, table.requests(), results); });
    if (!status.ok()) throw_status(status);

    const py::ssize_t rows = view.rows;
    const py::ssize_t n = table.max_samples();
    const py::ssize_t top = table.max_top_logprobs();
    SampleResult out{filled<int32_t>({rows, n}, -1),
                     filled<float>({rows, n}, kNaN),
                     filled<float>({rows, n}, kNaN),
                     filled<int64_t>({rows}, 0),
                     filled<int32_t>({rows, n}, -1),
                     filled<int32_t>({rows, top}, -1),
                     filled<float>({rows, top}, -std::numeric_limits<float>::infinity()),
                     py::list()};
    auto tokens = out.tokens.mutable_unchecked<2>();
    auto logprobs = out.logprobs.mutable_unchecked<2>();
    auto raw = out.raw_logprobs.mutable_unchecked<2>();
    auto support = out.support.mutable_unchecked<1>();
    auto ranks = out.ranks.mutable_unchecked<2>();
    auto top_tokens = out.top_tokens.mutable_unchecked<2>();
    auto top_logprobs = out.top_logprobs.mutable_unchecked<2>();
    for (py::ssize_t r = 0; r < rows; ++r) {
      const RowResult& result = results[static_cast<size_t>(r)];
      if (!result.status.ok()) {
        out.errors.append(result.status.message());
        continue;
      }
      out.errors.append(py::none());
      for (size_t j = 0; j < result.tokens.size() && static_cast<py::ssize_t>(j) < n; ++j) {
        const auto col = static_cast<py::ssize_t>(j);
        tokens(r, col) = result.tokens[j];
        if (j < result.logprobs.size()) logprobs(r, col) = result.logprobs[j];
        if (j < result.raw_logprobs.size()) raw(r, col) = result.raw_logprobs[j];
        if (j < result.ranks.size()) ranks(r, col) = result.ranks[j];
      }
      support(r) = result.support;
      for (size_t j = 0; j < result.top_logprobs.size() && static_cast<py::ssize_t>(j) < top; ++j) {
        top_tokens(r, static_cast<py::ssize_t>(j)) = result.top_logprobs[j].token;
        top_logprobs(r, static_cast<py::ssize_t>(j)) = result.top_logprobs[j].logprob;
      }
    }
    return out;
  }

  py::object probs(py::handle logits, py::kwargs kwargs) {
    const bool bf16 = parse_logits_dtype(pop(kwargs, "logits_dtype"));
    py::object out_arg = pop(kwargs, "out");
    const bool return_errors = py::bool_(pop(kwargs, "return_errors"));
    LogitsInput in = LogitsInput::from_object(logits, "logits", bf16);
    const LogitsView& view = in.view();
    check_has_rows(view);
    RequestTable table =
        RequestTable::from_kwargs(kwargs, view.rows, view.vocab, CallKind::kProbs, "probs");

    py::array_t<float> out;
    int64_t out_stride = view.vocab;
    if (out_arg.is_none()) {
      std::vector<py::ssize_t> shape(in.shape().begin(), in.shape().end());
      out = py::array_t<float>(shape);
    } else {
      out = checked_out(out_arg, in, &out_stride);
    }
    table.check(view.vocab);
    std::vector<Status> row_status(static_cast<size_t>(std::max<int64_t>(view.rows, 0)));
    float* data = out.mutable_data();
    Status status;
    without_gil(
        [&] { status = engine_.probs(view, table.requests(), data, out_stride, row_status); });
    if (!status.ok()) throw_status(status);
    py::list errors;
    for (int64_t r = 0; r < view.rows; ++r) {
      const Status& s = row_status[static_cast<size_t>(r)];
      if (s.ok()) {
        errors.append(py::none());
        continue;
      }
      // A zero row would read as "every token removed"; NaN cannot be
      // mistaken for a distribution.
      float* row = data + r * out_stride;
      for (int64_t i = 0; i < view.vocab; ++i) row[i] = kNaN;
      errors.append(s.message());
    }
    if (return_errors) return py::make_tuple(out, errors);
    return out;
  }

  VerifyOutput verify(py::handle target_logits, py::handle draft_tokens, py::handle draft_probs,
                      py::kwargs kwargs) {
    const bool bf16 = parse_logits_dtype(pop(kwargs, "logits_dtype"));
    py::module_ numpy = py::module_::import("numpy");
    py::array drafts = as_array(draft_tokens, "draft_tokens");
    if (drafts.ndim() != 1 && drafts.ndim() != 2) {
      throw py::value_error("draft_tokens: expected [rows, K] (or [K] for one row), got " +
                            std::to_string(drafts.ndim()) + " axes");
    }
    const char kind = drafts.dtype().kind();
    if (drafts.size() > 0 && kind != 'i' && kind != 'u') {
      throw py::type_error("draft_tokens: expected integer token ids, got dtype " +
                           py::str(drafts.dtype()).cast<std::string>());
    }
    const int64_t rows = drafts.ndim() == 2 ? drafts.shape(0) : 1;
    const int64_t k = drafts.shape(drafts.ndim() - 1);
    if (const std::optional<uint64_t> big = first_past_int64(drafts)) {
      throw py::value_error("draft_tokens: token " + std::to_string(*big) +
                            " does not fit in int32");
    }
    auto drafts64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(drafts);
    if (!drafts64) throw py::error_already_set();
    std::vector<int32_t> tokens(static_cast<size_t>(rows * k));
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int64_t t = drafts64.data()[i];
      if (t < INT32_MIN || t > INT32_MAX) {
        throw py::value_error("draft_tokens: token " + std::to_string(t) +
                              " does not fit in int32");
      }
      tokens[i] = static_cast<int32_t>(t);
    }

    LogitsInput in = LogitsInput::from_object(target_logits, "target_logits", bf16);
    const LogitsView& view = in.view();
    const std::vector<int64_t>& shape = in.shape();
    const bool shape_ok = view.rows == rows * (k + 1) &&
                          (shape.size() != 3 || (shape[0] == rows && shape[1] == k + 1)) &&
                          shape.size() <= 3;
    if (!shape_ok) {
      throw py::value_error(
          "target_logits: expected [rows, K + 1, vocab] = [" + std::to_string(rows) + ", " +
          std::to_string(k + 1) + ", vocab] for draft_tokens of shape [" + std::to_string(rows) +
          ", " + std::to_string(k) + "], got " + std::to_string(view.rows) + " rows of logits");
    }

    py::array_t<float, py::array::c_style | py::array::forcecast> probs;
    const float* probs_data = nullptr;
    if (!draft_probs.is_none()) {
      const py::array given = as_array(draft_probs, "draft_probs");
      probs = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(given);
      if (!probs) {
        throw py::type_error("draft_probs: expected float32 probabilities, got dtype " +
                             py::str(given.dtype()).cast<std::string>());
      }
      // [rows, K, vocab] or [rows * K, vocab], as target_logits may be laid
      // out ([K, rows, vocab] of the same size is refused, not misread)
      const bool laid_out =
          ((probs.ndim() == 3 && probs.shape(0) == rows && probs.shape(1) == k &&
            probs.shape(2) == view.vocab) ||
           (probs.ndim() == 2 && probs.shape(0) == rows * k && probs.shape(1) == view.vocab));
      if (!laid_out) {
        std::string got;
        for (py::ssize_t i = 0; i < probs.ndim(); ++i) {
          got += (i > 0 ? ", " : "") + std::to_string(probs.shape(i));
        }
        throw py::value_error("draft_probs: expected [rows, K, vocab] = [" + std::to_string(rows) +
                              ", " + std::to_string(k) + ", " + std::to_string(view.vocab) +
                              "] (or [rows * K, vocab]) float32 probabilities, got [" + got + "]");
      }
      if (reinterpret_cast<uintptr_t>(probs.data()) % sizeof(float) != 0) {
        // (numpy keeps an array of unaligned floats as it is; a copy aligns)
        probs = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(
            py::module_::import("numpy").attr("array")(probs));
      }
      probs_data = probs.data();
    }

    RequestTable table =
        RequestTable::from_kwargs(kwargs, rows, view.vocab, CallKind::kVerify, "verify");
    table.check(view.vocab);
    ReusedResults<VerifyResult> reused(rows);
    std::vector<VerifyResult>& results = reused.get();
    Status status;
    without_gil(
        [&] { status = engine_.verify(view, k, tokens, probs_data, table.requests(), results); });
    if (!status.ok()) throw_status(status);

    VerifyOutput out{filled<int32_t>({rows}, -1), filled<int32_t>({rows, k + 1}, -1), py::list()};
    auto accepted = out.accepted.mutable_unchecked<1>();
    auto out_tokens = out.tokens.mutable_unchecked<2>();
    for (int64_t r = 0; r < rows; ++r) {
      const VerifyResult& result = results[static_cast<size_t>(r)];
      if (!result.status.ok()) {
        out.errors.append(result.status.message());
        continue;
      }
      out.errors.append(py::none());
      accepted(r) = result.accepted;
      for (size_t j = 0; j < result.tokens.size() && static_cast<int64_t>(j) <= k; ++j) {
        out_tokens(r, static_cast<py::ssize_t>(j)) = result.tokens[j];
      }
    }
    return out;
  }

 private:
  static EngineOptions options(const py::object& threads, const py::object& seed,
                               const std::string& isa, const std::string& read_ahead) {
    EngineOptions o;
    const auto parsed = parse_isa(isa);
    if (!parsed) {
      throw py::value_error("isa = '" + isa + "' is not auto, sse2, avx2 or avx512");
    }
    o.isa = *parsed;
    const auto mode = parse_read_ahead(read_ahead);
    if (!mode) {
      throw py::value_error("read_ahead = '" + read_ahead + "' is not auto, always or never");
    }
    o.read_ahead = *mode;
    if (!threads.is_none()) {
      const py::object index = to_index(threads, "threads");
      int overflow = 0;  // (past int64: out of range as well)
      const long long t = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
      if (overflow != 0 || t < 0 || t > INT32_MAX) {
        throw py::value_error("threads = " + py::repr(index).cast<std::string>() +
                              " is outside [0, 2**31) (0 or None: every core the process may "
                              "use)");
      }
      o.max_threads = static_cast<int>(t);
    }
    if (!seed.is_none()) o.seed = to_uint64(seed, "seed");
    return o;
  }

  // `out` for probs(): float32, writable, the input's shape, rows readable
  // one contiguous row at a time with a uniform stride.
  static py::array_t<float> checked_out(const py::object& out_arg, const LogitsInput& in,
                                        int64_t* out_stride) {
    if (!py::isinstance<py::array>(out_arg)) {
      throw py::type_error("out: expected a numpy float32 array");
    }
    py::array a = py::reinterpret_borrow<py::array>(out_arg);
    if (!a.dtype().equal(py::dtype::of<float>())) {
      throw py::type_error("out: expected a float32 array, got dtype " +
                           py::str(a.dtype()).cast<std::string>());
    }
    if (!a.writeable()) throw py::value_error("out: the array is read-only");
    std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
    std::vector<int64_t> strides(a.strides(), a.strides() + a.ndim());
    int64_t rows = 0;
    if (shape != in.shape() || shape.empty() ||
        !row_layout(a.data(), 4, shape, strides, &rows, out_stride)) {
      throw py::value_error(
          "out: expected the shape of the logits, with each row contiguous and the rows a "
          "uniform stride apart");
    }
    return py::reinterpret_borrow<py::array_t<float>>(a);
  }

  Engine engine_;
};

// The engine behind the module-level functions, made on first use. It is
// never destroyed: its worker threads must not be torn down while the
// interpreter finalises.
PyEngine& default_engine() {
  static PyEngine* engine = new PyEngine(py::none(), py::none(), py::str("auto"), py::str("auto"));
  return *engine;
}

py::array load_dump(const py::object& path, const py::object& tensor, const py::object& dtype,
                    const py::object& vocab, const py::object& format, const std::string& bf16) {
  // The path's bytes as the operating system spells them (str, bytes or
  // os.PathLike, as open() takes).
  const std::string file = py::module_::import("os").attr("fsencode")(path).cast<std::string>();
  // (the system would read the name only up to it, as another file's)
  if (file.find('\0') != std::string::npos) throw py::value_error("path: embedded null byte");
  DumpOptions options;
  if (!format.is_none()) {
    const std::string name = text_argument("format", format);
    std::optional<DumpFormat> f = parse_dump_format(name);
    if (!f) {
      throw py::value_error("format = '" + name +
                            "' is not one of 'auto', 'npy', 'safetensors', 'raw'");
    }
    options.format = *f;
  }
  if (!tensor.is_none()) options.tensor = text_argument("tensor", tensor);
  if (!dtype.is_none()) {
    // (a string, or what numpy takes for a dtype: np.float32, np.dtype('<f2'))
    std::string name;
    if (py::isinstance<py::str>(dtype)) {
      name = dtype.cast<std::string>();
    } else {
      try {
        name = py::str(py::module_::import("numpy").attr("dtype")(dtype).attr("name"));
      } catch (py::error_already_set&) {
        throw py::type_error("dtype: expected a string or a numpy dtype, got " +
                             py::repr(dtype).cast<std::string>());
      }
    }
    options.dtype = parse_dtype(name);
    if (!options.dtype) {
      throw py::value_error("dtype = '" + name + "' is not one of 'f32', 'f16', 'bf16'");
    }
  }
  if (!vocab.is_none()) {
    // (an integer, numpy's too: bool and float are not)
    PyObject* index = py::isinstance<py::bool_>(vocab) ? nullptr : PyNumber_Index(vocab.ptr());
    if (index == nullptr) {
      PyErr_Clear();
      throw py::type_error("vocab = " + py::repr(vocab).cast<std::string>() +
                           ": expected an integer");
    }
    const py::int_ vocab_int = py::reinterpret_steal<py::int_>(index);
    try {
      options.vocab = vocab_int.cast<int64_t>();
    } catch (const py::cast_error&) {
      throw py::value_error("vocab = " + py::repr(vocab).cast<std::string>() +
                            " does not fit a 64-bit integer");
    }
    // (0 would read as "not given" below)
    if (options.vocab <= 0) {
      throw py::value_error("vocab = " + std::to_string(options.vocab) + " must be > 0");
    }
  }
  if (bf16 != "float32" && bf16 != "uint16") {
    throw py::value_error("bf16 = '" + bf16 + "' is not one of 'float32', 'uint16'");
  }

  std::optional<Result<DumpReader>> opened;
  without_gil([&] { opened.emplace(DumpReader::open(file, options)); });
  if (!opened->ok()) throw_status(opened->status());
  DumpReader& reader = opened->value();
  const DumpInfo& info = reader.info();

  std::vector<py::ssize_t> shape(info.shape.begin(), info.shape.end());
  py::ssize_t count = 1;
  for (py::ssize_t d : shape) count *= d;
  if (shape.empty() || count != info.rows * info.vocab) shape = {info.rows, info.vocab};
  const bool widen = info.dtype == DType::kBFloat16 && bf16 == "float32";
  py::dtype out_dtype = info.dtype == DType::kFloat16              ? py::dtype("float16")
                        : info.dtype == DType::kBFloat16 && !widen ? py::dtype::of<uint16_t>()
                                                                   : py::dtype::of<float>();
  py::array out(out_dtype, shape);
  char* dst = static_cast<char*>(out.mutable_data());
  Status status;
  // The rows are read straight into the array (bfloat16 rows widened to
  // float32 in place).
  if (info.rows * info.vocab > 0) {
    without_gil([&] {
      status = widen ? reader.read_into_float32(0, info.rows, reinterpret_cast<float*>(dst))
                     : reader.read_into(0, info.rows, dst);
    });
  }
  if (!status.ok()) throw_status(status);
  return out;
}

const char* kParams = R"(
Parameters (keyword-only; each takes one value for every row, or a list or
1-D array with one value per row; None means the default):
  temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
  top_n_sigma=0.0, min_keep=1, repetition_penalty=1.0, frequency_penalty=0.0,
  presence_penalty=0.0, preset='hf' ('hf', 'vllm', 'llama.cpp'),
  seed=None (int S: row r uses S + r; or a per-row list, None = unseeded),
  step=0,
  history=None, prompt=None, banned=None: token ids, one list for every row
      or a list of lists / 2-D array with one list per row,
  logit_bias=None: {token: bias} for every row or a list of per-row dicts,
  allowed_mask=None: int32 words [rows, ceil(vocab/32)] or one row for every
      row (bit i % 32 of word i // 32 allows token i), or a boolean
      [rows, vocab] / [vocab] mask,
  logits_dtype=None: 'bf16' reads a uint16 array as bfloat16 bit patterns.
)";

void define_module(py::module_& m) {
  py::options options;
  // The signatures are written into the docstrings: the parameters travel as
  // **kwargs so that every call shares one parser.
  options.disable_function_signatures();

  m.doc() =
      "nucleus: exact, reproducible token sampling for LLM decoding.\n\n"
      "Engine(threads=None, seed=None).sample / probs / verify take logits as numpy\n"
      "arrays (float32, float16; rows x vocab, padded row strides allowed), any\n"
      "buffer-protocol object, or DLPack tensors (PyTorch CPU, bfloat16 too).\n"
      "See docs/python.md.";
  m.attr("__version__") = nucleus::version();

  py::class_<SampleResult>(m, "SampleResult",
                           "The outcome of Engine.sample: numpy arrays, one row per logit row.")
      .def_readonly("tokens", &SampleResult::tokens,
                    "int32 [rows, n]: the sampled token ids (-1 for a row error, or past a "
                    "row's own n)")
      .def_readonly("logprobs", &SampleResult::logprobs,
                    "float32 [rows, n]: log-probability under the final distribution")
      .def_readonly("raw_logprobs", &SampleResult::raw_logprobs,
                    "float32 [rows, n]: log-probability under log_softmax of the raw row")
      .def_readonly("support", &SampleResult::support,
                    "int64 [rows]: tokens left after the filters")
      .def_readonly("ranks", &SampleResult::ranks,
                    "int32 [rows, n]: 1-based rank of each sample (-1 unless logprobs > 0)")
      .def_readonly("top_tokens", &SampleResult::top_tokens,
                    "int32 [rows, N]: the top-N token ids, N = the largest logprobs (-1 padding)")
      .def_readonly("top_logprobs", &SampleResult::top_logprobs,
                    "float32 [rows, N]: their log-probabilities (-inf padding)")
      .def_readonly("errors", &SampleResult::errors,
                    "list: None for a sampled row, else the row's error message")
      .def_property_readonly(
          "ok",
          [](const SampleResult& r) {
            py::array_t<bool> ok(static_cast<py::ssize_t>(r.errors.size()));
            for (size_t i = 0; i < r.errors.size(); ++i) {
              ok.mutable_data()[i] = r.errors[i].is_none();
            }
            return ok;
          },
          "bool [rows]: which rows were sampled")
      .def("__len__", [](const SampleResult& r) { return r.errors.size(); })
      .def("__repr__", [](const SampleResult& r) {
        size_t failed = 0;
        for (py::handle e : r.errors) failed += e.is_none() ? 0 : 1;
        return "SampleResult(rows=" + std::to_string(r.errors.size()) +
               ", n=" + std::to_string(r.tokens.shape(1)) + ", errors=" + std::to_string(failed) +
               ")";
      });

  py::class_<VerifyOutput>(m, "VerifyResult",
                           "The outcome of Engine.verify; unpacks as (accepted, tokens).")
      .def_readonly("accepted", &VerifyOutput::accepted,
                    "int32 [rows]: draft tokens accepted, 0..K (-1 for a row error)")
      .def_readonly("tokens", &VerifyOutput::tokens,
                    "int32 [rows, K + 1]: the accepted drafts, then the recovered or bonus "
                    "token (-1 padding)")
      .def_readonly("errors", &VerifyOutput::errors,
                    "list: None for a verified row, else the row's error message")
      .def("__iter__",
           [](const VerifyOutput& v) { return py::iter(py::make_tuple(v.accepted, v.tokens)); })
      .def("__getitem__",
           [](const VerifyOutput& v, int i) -> py::object {
             if (i == 0 || i == -2) return v.accepted;
             if (i == 1 || i == -1) return v.tokens;
             throw py::index_error("VerifyResult unpacks as (accepted, tokens)");
           })
      .def("__len__", [](const VerifyOutput&) { return 2; })
      .def("__repr__", [](const VerifyOutput& v) {
        return "VerifyResult(rows=" + std::to_string(v.errors.size()) + ")";
      });

  const std::string sample_doc =
      std::string(
          "sample(self, logits, *, n=1, logprobs=0, logprobs_mode='processed', **params)\n"
          "Draws n tokens from each row of `logits` ([vocab] or [rows, vocab]; leading\n"
          "axes flatten into rows). Returns a SampleResult. A call error (a bad\n"
          "parameter) raises ValueError; a row error (a NaN logit, every token masked)\n"
          "is reported in result.errors and the other rows are still sampled.\n"
          "  n: samples per row; logprobs: N > 0 also returns the top-N and the ranks;\n"
          "  logprobs_mode: 'processed' (final distribution) or 'raw'.\n") +
      kParams;
  const std::string probs_doc =
      std::string(
          "probs(self, logits, *, out=None, return_errors=False, **params)\n"
          "The final distribution of each row (after masks, penalties, temperature\n"
          "and filters): float32, the shape of `logits`, zero for removed tokens.\n"
          "Rows with a row error are NaN; return_errors=True returns (probs, errors).\n"
          "`out` (float32, the logits' shape) receives the result.\n") +
      kParams;
  const std::string verify_doc =
      std::string(
          "verify(self, target_logits, draft_tokens, draft_probs=None, **params)\n"
          "Speculative-decoding verification. target_logits [rows, K + 1, vocab],\n"
          "draft_tokens [rows, K], draft_probs None (a deterministic drafter) or\n"
          "[rows, K, vocab] float32. Each target row's distribution is the final\n"
          "distribution of that row's parameters, the drafts before it appended to\n"
          "its history. Returns a VerifyResult that unpacks as (accepted [rows],\n"
          "tokens [rows, K + 1] padded with -1); row errors are in .errors.\n") +
      kParams;

  py::class_<PyEngine>(m, "Engine",
                       "Engine(threads=None, seed=None, isa='auto', read_ahead='auto')\n\n"
                       "A sampling engine. threads: the most threads it may use (None or 0: "
                       "every core);\nseed: seeds the generator of unseeded rows (None: from "
                       "the system);\nisa: the highest instruction set of the row passes "
                       "(auto, sse2, avx2, avx512;\nalso capped by the CPU and by the "
                       "NUCLEUS_ISA environment variable);\nread_ahead: whether each row's "
                       "passes bring the next row of a batch into cache\n(speed only): "
                       "'always' (every batch of two rows or more), 'never', or 'auto'\n"
                       "(as the NUCLEUS_READ_AHEAD environment variable says; unset: "
                       "batches of 32 MiB\nor more, and from 1 MB those whose rows a probe "
                       "finds coming from memory,\nas rows copied from a GPU do).\nSafe to "
                       "share between "
                       "Python threads; the GIL is released while it samples.")
      .def(py::init<const py::object&, const py::object&, const py::object&, const py::object&>(),
           py::arg("threads") = py::none(), py::arg("seed") = py::none(),
           py::arg("isa") = py::str("auto"), py::arg("read_ahead") = py::str("auto"))
      .def_property_readonly("max_threads", &PyEngine::max_threads,
                             "The number of threads this engine may use.")
      .def_property_readonly("isa", &PyEngine::isa,
                             "The instruction set this engine's row passes run.")
      .def_property_readonly("read_ahead", &PyEngine::read_ahead,
                             "When this engine reads the next row ahead: its read_ahead, or\n"
                             "NUCLEUS_READ_AHEAD's mode where that was 'auto'.")
      .def("sample", &PyEngine::sample, py::arg("logits"), sample_doc.c_str())
      .def("probs", &PyEngine::probs, py::arg("logits"), probs_doc.c_str())
      .def("verify", &PyEngine::verify, py::arg("target_logits"), py::arg("draft_tokens"),
           py::arg("draft_probs") = py::none(), verify_doc.c_str())
      .def("__repr__", [](const PyEngine& e) {
        return "nucleus.Engine(threads=" + std::to_string(e.max_threads()) + ", isa='" + e.isa() +
               "', read_ahead='" + e.read_ahead() + "')";
      });

  m.def(
      "sample",
      [](py::handle logits, py::kwargs kwargs) {
        return default_engine().sample(logits, std::move(kwargs));
      },
      py::arg("logits"), "sample(logits, **params)\n\nEngine.sample on a shared default engine.");
  m.def(
      "probs",
      [](py::handle logits, py::kwargs kwargs) {
        return default_engine().probs(logits, std::move(kwargs));
      },
      py::arg("logits"), "probs(logits, **params)\n\nEngine.probs on a shared default engine.");
  m.def(
      "verify",
      [](py::handle target, py::handle drafts, py::handle draft_probs, py::kwargs kwargs) {
        return default_engine().verify(target, drafts, draft_probs, std::move(kwargs));
      },
      py::arg("target_logits"), py::arg("draft_tokens"), py::arg("draft_probs") = py::none(),
      "verify(target_logits, draft_tokens, draft_probs=None, **params)\n\n"
      "Engine.verify on a shared default engine.");
  m.def(
      "runnable_isas",
      [] {
        py::list out;
        for (Isa isa : runnable_isas()) out.append(isa_name(isa));
        return out;
      },
      "runnable_isas()\n\nThe instruction sets an Engine here can run (its isa= values), lowest\n"
      "first; NUCLEUS_ISA in the environment caps them. The last is what isa='auto' runs.");
  m.def("load_dump", &load_dump, py::arg("path"), py::arg("tensor") = py::none(),
        py::arg("dtype") = py::none(), py::arg("vocab") = py::none(), py::kw_only(),
        py::arg("format") = py::none(), py::arg("bf16") = "float32",
        "load_dump(path, tensor=None, dtype=None, vocab=None, *, format=None, bf16='float32')\n"
        "Reads a whole logit dump (.npy, .safetensors, or raw with dtype and vocab) into\n"
        "a numpy array of its stored shape: float32 or float16 as stored; bfloat16\n"
        "becomes float32 (exact), or its raw bits as uint16 with bf16='uint16'\n"
        "(sample those with logits_dtype='bf16'). Raises OSError when the file cannot\n"
        "be read or is not a valid dump (the message names the file and the field),\n"
        "ValueError for a bad argument.");
  m.def(
      "_inspect_logits",
      [](py::handle logits, py::handle logits_dtype) {
        LogitsInput in =
            LogitsInput::from_object(logits, "logits", parse_logits_dtype(logits_dtype));
        const LogitsView& v = in.view();
        py::dict d;
        d["dtype"] = dtype_name(v.dtype);
        d["rows"] = v.rows;
        d["vocab"] = v.vocab;
        d["row_stride"] = v.row_stride;
        d["data"] = reinterpret_cast<uintptr_t>(v.data);
        d["copied"] = in.copied();
        d["source"] = in.source();
        return d;
      },
      py::arg("logits"), py::arg("logits_dtype") = py::none(),
      "_inspect_logits(logits, logits_dtype=None)\n\n"
      "How the engine would read `logits` (for tests): dtype, rows, vocab, row_stride,\n"
      "data address, whether it was copied, and the source protocol.");
}

}  // namespace
}  // namespace nucleus::python

PYBIND11_MODULE(nucleus, m) { nucleus::python::define_module(m); }
