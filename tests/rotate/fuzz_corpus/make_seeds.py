"""Write small AMRVAC v3/v4/v5 snapshots as fuzz seeds (a 2x2x2-root forest of
2^3-cell blocks, the first root refined; one file with ghost layers).
python3 make_seeds.py writes tiny_v3.dat, tiny_v4.dat, tiny_v5.dat, tiny_ghost_v5.dat."""
import struct


def morton_roots(ng):
    return [(x, y, z) for z in range(ng) for y in range(ng) for x in range(ng)
            ] if ng == 1 else sorted(
        [(x, y, z) for x in range(ng) for y in range(ng) for z in range(ng)],
        key=lambda c: sum(((c[d] >> b) & 1) << (3 * b + d) for b in range(4) for d in range(3)))


def snapshot(version, ghost=False):
    nw, ndim, bnx, dnx = 2, 3, 2, 4
    roots = morton_roots(2)
    bits, leaves = [], []
    for r in roots:
        if r == (0, 0, 0):
            bits.append(0)
            for ic in range(8):
                c = tuple(2 * r[d] + ((ic >> d) & 1) for d in range(3))
                bits.append(1)
                leaves.append((2, c))
        else:
            bits.append(1)
            leaves.append((1, r))
    nleafs, nparents = len(leaves), bits.count(0)
    head = struct.pack("<10i", version, 0, 0, nw, 3, ndim, 2, nleafs, nparents, 0)
    head += struct.pack("<d", 0.0) + struct.pack("<3d", 0, 0, 0) + struct.pack("<3d", 1, 1, 1)
    head += struct.pack("<3i", dnx, dnx, dnx) + struct.pack("<3i", bnx, bnx, bnx)
    if version >= 5:
        head += struct.pack("<3i", 0, 0, 0) + b"Cartesian_3D".ljust(16) + struct.pack("<i", 0)
    head += b"rho".ljust(16) + b"e".ljust(16) + b"hd".ljust(16)
    head += struct.pack("<i", 1) + struct.pack("<d", 5 / 3) + b"gamma".ljust(16)
    if version >= 4:
        head += struct.pack("<3i", 0, 0, 0)
    offset_tree = len(head)
    blocks = []
    for lev, ig in leaves:
        last = 1 if lev == 1 else 3  # 0-based index of the block on the upper face
        lo = [2 if ghost and ig[d] == 0 else 0 for d in range(3)]
        hi = [2 if ghost and ig[d] == last else 0 for d in range(3)]
        n = 1
        for d in range(3):
            n *= bnx + lo[d] + hi[d]
        vals = [1.0 + 0.01 * i for i in range(n * nw)]
        blocks.append(struct.pack("<6i", *lo, *hi) + struct.pack(f"<{n * nw}d", *vals))
    tree = struct.pack(f"<{len(bits)}i", *bits) + struct.pack(f"<{nleafs}i", *[l for l, _ in leaves])
    tree += b"".join(struct.pack("<3i", *[c + 1 for c in ig]) for _, ig in leaves)
    off = offset_tree + len(tree) + 8 * nleafs
    offs = []
    for b in blocks:
        offs.append(off)
        off += len(b)
    tree += struct.pack(f"<{nleafs}q", *offs)
    head = head[:4] + struct.pack("<2i", offset_tree, offs[0]) + head[12:]
    return head + tree + b"".join(blocks)


for v in (3, 4, 5):
    open(f"tiny_v{v}.dat", "wb").write(snapshot(v))
open("tiny_ghost_v5.dat", "wb").write(snapshot(5, ghost=True))
