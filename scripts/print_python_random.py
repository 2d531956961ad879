#!/usr/bin/env python3
"""Prints the values tests/unit/test_py_random.cpp checks lowbit's PyRandom against.

Run with Python 3 (any version since 3.2: the seeding and _randbelow algorithms are unchanged):
    python3 scripts/print_python_random.py
"""
import random
import sys

print("// Python", sys.version.split()[0])
for seed in (0, 1, 42, 2**32 + 5, 2**63 - 1):
    random.seed(seed)
    u32 = [random.getrandbits(32) for _ in range(4)]
    random.seed(seed)
    ri = [random.randint(0, 1000) for _ in range(4)] + [random.randint(0, 2**40) for _ in range(2)]
    random.seed(seed)
    bits = [random.getrandbits(k) for k in (1, 7, 31, 33, 64)]
    random.seed(seed)
    fl = [random.random() for _ in range(2)]
    print(f"{{{seed}ULL, {{{', '.join(map(str, u32))}}}, {{{', '.join(str(x) + 'LL' for x in ri)}}}, "
          f"{{{', '.join(str(x) + 'ULL' for x in bits)}}}, {{{', '.join(repr(x) for x in fl)}}}}},")

# GPTQ's C4 window draw on documents whose token counts are 100 + (37 * i) % 400 (i < 50),
# seqlen 256, 8 windows: (document, start) pairs.
lens = [100 + (37 * i) % 400 for i in range(50)]
random.seed(0)
out = []
for _ in range(8):
    while True:
        i = random.randint(0, len(lens) - 1)
        if lens[i] >= 256:
            break
    j = random.randint(0, lens[i] - 256 - 1)
    out.append((i, j))
print("// c4 draws:", ", ".join(f"{{{i}, {j}}}" for i, j in out))
