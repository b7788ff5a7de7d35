// nucleus — status values returned at the API boundary.
//
// Errors are values: every public call returns a `Status` (or a `Result<T>`),
// never throws. Messages name the row, the field and the bad value.
//
// Example:
//   nucleus::Status s = engine.sample(view, requests, results);
//   if (!s.ok()) std::fprintf(stderr, "%s\n", s.message().c_str());
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace nucleus {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument = 1,  // a call error: nothing was written (SPEC section 7)
  kRowError = 2,         // one row could not be sampled; the others were
  kIoError = 3,          // a file could not be read or written
  kInternal = 4,         // a bug or an exhausted resource
};

const char* status_code_name(StatusCode code);

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status invalid_argument(std::string m) {
    return Status(StatusCode::kInvalidArgument, std::move(m));
  }
  static Status row_error(std::string m) { return Status(StatusCode::kRowError, std::move(m)); }
  static Status io_error(std::string m) { return Status(StatusCode::kIoError, std::move(m)); }
  static Status internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: message", or "OK".
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// A value or the Status that explains why there is none.
template <typename T>
class Result {
 public:
  Result(T value) : data_(std::move(value)) {}  // NOLINT: implicit by design
  // (an OK status without a value is a slip: held as an internal error, so
  // that ok() and status() agree)
  Result(Status status)  // NOLINT: implicit by design
      : data_(status.ok() ? Status::internal("a Result made from an OK status, without a value")
                          : std::move(status)) {}

  bool ok() const { return std::holds_alternative<T>(data_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(data_);
  }
  T& value() & { return std::get<T>(data_); }
  const T& value() const& { return std::get<T>(data_); }
  T&& value() && { return std::get<T>(std::move(data_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

 private:
  std::variant<T, Status> data_;
};

}  // namespace nucleus
