// Chooses which build of the row passes runs (engine/kernels/row_kernels.h):
// the best instruction set the CPU and OS support, capped by the engine's
// option and the NUCLEUS_ISA environment variable.
#include <cpuid.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/ascii_lower.h"
#include "engine/kernels/row_kernels.h"
#include "nucleus/engine.h"

namespace nucleus {
namespace detail {

// One per build of the kernel sources (engine/CMakeLists.txt).
extern const Kernels kernels_sse2;
extern const Kernels kernels_avx2;
extern const Kernels kernels_avx512;

const Kernels& kernels_for(Isa isa) {
  return for_isa(isa, kernels_sse2, kernels_avx2, kernels_avx512);
}

namespace {

// The rest of x86-64-v3 that the AVX2 build may use: F16C, MOVBE and POPCNT
// (CPUID leaf 1, ECX) and LZCNT (leaf 0x80000001, ECX), which not every
// compiler's __builtin_cpu_supports can name (clang 14's cannot). A CPU with
// AVX2 nearly always has them, but a virtual machine may hide some: without
// F16C a float16 row would stop at an illegal instruction, and without LZCNT
// the instruction runs as BSR and counts wrong.
bool has_v3_rest() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return false;
  const bool leaf1 = (c & bit_F16C) != 0 && (c & bit_MOVBE) != 0 && (c & bit_POPCNT) != 0;
  if (__get_cpuid(0x80000001u, &a, &b, &c, &d) == 0) return false;
  return leaf1 && (c & bit_LZCNT) != 0;
}

Isa detect() {
  __builtin_cpu_init();
  // x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE (and v2's POPCNT). The
  // checks of __builtin_cpu_supports include the OS's support for the AVX
  // register state.
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && has_v3_rest();
  // x86-64-v4 as GCC and clang compile for it: v3 and AVX-512 F, BW, CD, DQ, VL.
  if (v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl")) {
    return Isa::kAVX512;
  }
  if (v3) return Isa::kAVX2;
  return Isa::kSSE2;
}

// NUCLEUS_ISA, read once; kAuto when unset. A value that names no
// instruction set is reported once on standard error and ignored.
Isa environment_cap() {
  static const Isa cap = [] {
    const char* v = std::getenv("NUCLEUS_ISA");
    if (v == nullptr || *v == '\0') return Isa::kAuto;
    if (auto isa = parse_isa(v)) return *isa;
    std::fprintf(stderr, "nucleus: ignoring NUCLEUS_ISA=%s (expected auto, sse2, avx2 or avx512)\n",
                 v);
    return Isa::kAuto;
  }();
  return cap;
}

Isa cap_at(Isa isa, Isa cap) {
  if (cap == Isa::kAuto) return isa;
  return static_cast<int>(cap) < static_cast<int>(isa) ? cap : isa;
}

}  // namespace
}  // namespace detail

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kSSE2:
      return "sse2";
    case Isa::kAVX2:
      return "avx2";
    case Isa::kAVX512:
      return "avx512";
    case Isa::kAuto:
      break;
  }
  return "auto";
}

std::optional<Isa> parse_isa(std::string_view name) {
  const std::string lower = detail::ascii_lower(name);
  for (Isa isa : {Isa::kAuto, Isa::kSSE2, Isa::kAVX2, Isa::kAVX512}) {
    if (lower == isa_name(isa)) return isa;
  }
  return std::nullopt;
}

Isa best_isa() {
  static const Isa best = detail::detect();
  return best;
}

Isa resolve_isa(Isa requested) {
  // (a value outside the enumeration, made by a cast: kAuto's)
  if (static_cast<int>(requested) < static_cast<int>(Isa::kAuto) ||
      static_cast<int>(requested) > static_cast<int>(Isa::kAVX512)) {
    requested = Isa::kAuto;
  }
  return detail::cap_at(detail::cap_at(best_isa(), requested), detail::environment_cap());
}

std::vector<Isa> runnable_isas() {
  std::vector<Isa> out;
  const Isa top = resolve_isa(Isa::kAuto);
  for (Isa isa : {Isa::kSSE2, Isa::kAVX2, Isa::kAVX512}) {
    if (static_cast<int>(isa) <= static_cast<int>(top)) out.push_back(isa);
  }
  return out;
}

}  // namespace nucleus
