"""The Python leg of tests/bad_input_test.cc's malformed-dump matrix.

Usage: check_bad_dumps.py MANIFEST

Each line of MANIFEST is tab-separated: path, format, tensor, dtype, vocab
(0: none), then the parts every message must mention, separated by \\x1f.
nucleus.load_dump must refuse each file with ValueError or OSError whose
message mentions every part (case-insensitive), as the C++ and C readers and
the program do. Prints one line per failure; exits 1 if there is any.
"""
import sys

import nucleus


def main(manifest):
    failures = 0
    cases = 0
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            path, fmt, tensor, dtype, vocab, parts = line.rstrip("\n").split("\t")
            cases += 1
            kwargs = {}
            if fmt != "auto":
                kwargs["format"] = fmt
            if tensor:
                kwargs["tensor"] = tensor
            if dtype:
                kwargs["dtype"] = dtype
            if vocab != "0":
                kwargs["vocab"] = int(vocab)
            try:
                nucleus.load_dump(path, **kwargs)
            except (ValueError, OSError) as e:
                text = str(e).lower()
                missing = [p for p in parts.split("\x1f") if p and p.lower() not in text]
                if missing:
                    print(f"{path}: message {str(e)!r} does not mention {missing}")
                    failures += 1
                continue
            except Exception as e:  # noqa: BLE001 - any other kind is a failure
                print(f"{path}: {type(e).__name__} instead of ValueError / OSError: {e}")
                failures += 1
                continue
            print(f"{path}: accepted")
            failures += 1
    print(f"{cases} malformed dumps, {failures} failures")
    return 1 if failures or cases == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
