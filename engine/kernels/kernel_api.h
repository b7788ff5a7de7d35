// The passes of one instruction set's build, declared inside the namespace
// nucleus::detail::<isa> by the file that includes this one (no include
// guard: it is included once per namespace). Each entry of Kernels
// (engine/kernels/row_kernels.h) has one function here; the comments are
// there.

void to_float(const void* src, DType dtype, int64_t n, float* dst);
MaxStats max_stats(const float* x, int64_t n, float* block_max);
MaxStats widen_max_stats(const void* src, DType dtype, int64_t n, float* dst, float* block_max);
Moments moments(const Segment& s, const SetSpec& set, float d0, MomentKind kind, float* e_out,
                float* w_out);
double sum_mass(const Segment& s, const SetSpec& set, float k0, int64_t* count, double* block_sums);
double sum_mass_gather(const Segment& s, const SetSpec& set, float k0, float bound, int64_t cap,
                       GatheredToken* out, int64_t* gathered);
double sum_mass_band(const Segment& s, const SetSpec& set, float k0, float lo, float hi,
                     float* out_key, float* out_weight, int64_t* listed, double* below,
                     int64_t* below_count);
float min_key(const Segment& s, const SetSpec& set);
int64_t count_key_below(const Segment& s, const SetSpec& set, float key);
int64_t count_band(const Segment& s, const SetSpec& set, const KeyRule& rule, float lo, float hi,
                   float* out_key, int64_t* below);
int64_t walk(const Segment& s, const SetSpec& set, float k0, const double* block_sums,
             double cum_before, double target);
void write_probs(const Segment& s, const SetSpec& set, float k0, double inv_z, float* out);
int64_t gather_le(const Segment& s, const SetSpec& set, float c, KeyToken* out);
int64_t compact(const Segment& s, const SetSpec& set, float* cx, int32_t* ci);
void key_histogram(const Segment& s, const SetSpec& set, const KeyRule& rule, uint32_t* counts,
                   double* weights);
double store_keys(const Segment& s, const SetSpec& set, const KeyRule& rule, float* key,
                  float* weight, const float* pivots, double* sums, int64_t* counts);
int64_t keep_and_sum(const float* key, const float* weight, int64_t n, float lo, float hi,
                     const float* pivots, float* out_key, float* out_weight, double* sums,
                     int64_t* counts);
void typical_keys_from_e(float* e_key, const float* weight, int64_t n, double mu,
                         const float* pivots, double* sums, int64_t* counts);
int64_t sample_keys(const Segment& s, const SetSpec& set, const KeyRule& rule, int64_t stride,
                    float* out, double* mass);
int64_t gather_below(const Segment& s, const SetSpec& set, float bound, int64_t cap,
                     GatheredToken* out);
#if defined(__AVX512F__)
void pivot_sums(const SelectEntry* list, int64_t n, const float* pivots, double* mass,
                int64_t* count);
int64_t keep_between(SelectEntry* list, int64_t n, float lo, float hi);
#endif
double masked_sum_mass(const Segment& s, const int32_t* words, const SetSpec& set,
                       double* allowed_total);
void gathered_keys(const GatheredToken* g, int64_t n, float d0, SelectEntry* out);
int64_t compact_gathered(const GatheredToken* g, int64_t n, float lo, float hi, float* x,
                         int32_t* idx);
int64_t gather_bucket(const Segment& s, const SetSpec& set, const KeyRule& rule, float lo, float hi,
                      bool inf_bucket, SelectEntry* out);
void entry_masses(SelectEntry* list, int64_t n);
float kth_largest(const float* v, int64_t n, int64_t k, uint32_t* keys);
void sort_short(const SelectEntry* list, int64_t n, SelectEntry* out);
KeyBounds key_bounds(const Segment& s, const SetSpec& set, const KeyRule& rule, float c);
KeyBounds stored_key_bounds(const Segment& s, const SetSpec& set, const float* key, float c);
TypicalGather typical_gather(const Segment& s, const SetSpec& set, float d0, float bound,
                             int64_t cap, GatheredToken* out);
void repeat_penalty(const int32_t* a, int64_t na, const int32_t* b, int64_t nb, int64_t lo,
                    int64_t hi, float rp, const float* src, const int32_t* words, float* row,
                    uint64_t* seen, const RowChanges* changes);
void allowed_mask(const int32_t* words, int64_t lo, int64_t hi, float* row);
MaxStats masked_copy_stats(const void* src, DType dtype, const int32_t* words, int64_t lo,
                           int64_t n, float* dst, float* block_max, MaxStats* raw,
                           float* raw_block_max, float* widened);
int64_t allowed_count(const int32_t* words, int64_t n, int64_t limit);
int64_t gather_allowed(const int32_t* words, int64_t n, const float* x, float* cx, int32_t* ci,
                       bool left_out);
