#!/usr/bin/env python3
"""Groups a relay profile's samples by where the CPU went (docs/BENCHMARKS.md, "Issue 13 where
it ends"): the kernel by system call (sendmmsg's own part apart from loopback delivering into
the receivers' sockets, which a real NIC would not charge to the relay), quinn-proto, crypto,
the relay's own code, and the rest.

    perf script -F ip,sym -i perf.data | scripts/perf_groups.py [--top GROUP]

User-space call chains are cut at the leaf (release builds keep no frame pointers), so a
standard-library collection is grouped by itself ("std collections"); `--top GROUP` lists that
group's hottest functions, to name their callers by hand.
"""
import collections
import sys

KERNEL_LEAVES = ("_raw", "finish_task", "handle_softirq", "__slab", "skb", "kmem", "kfree")


def samples(lines):
    """Yields each sample's frames, leaf first (perf script prints one frame per line and a
    blank line between samples)."""
    frames = []
    for line in lines:
        parts = line.split(None, 1)
        if not parts:
            if frames:
                yield frames
            frames = []
            continue
        frames.append(parts[1].strip() if len(parts) > 1 else "?")
    if frames:
        yield frames


def group(frames):
    leaf, chain = frames[0], " ".join(frames)
    in_kernel = any(f.startswith(("__x64_sys", "do_syscall", "entry_SYSCALL", "asm_")) for f in frames)
    if in_kernel or leaf.startswith(KERNEL_LEAVES):
        if "sendmmsg" in chain:
            delivery = any(k in chain for k in ("net_rx_action", "__netif_receive_skb", "process_backlog"))
            return "kernel: sendmmsg, loopback delivery" if delivery else "kernel: sendmmsg, own"
        if "recvmmsg" in chain:
            return "kernel: recvmmsg"
        if any(k in chain for k in ("poll", "nanosleep", "futex", "schedule")):
            return "kernel: waiting, scheduling"
        return "kernel: other"
    if leaf.startswith("natter_relay::core"):
        return "ours: routing"
    if leaf.startswith("natter_relay"):
        return "ours: the plane"
    if any(k in leaf for k in ("ring", "rustls", "crypto", "gcm", "aes")):
        return "crypto"
    if leaf.startswith(("quinn_proto", "<quinn_proto")):
        return "quinn-proto"
    if any(k in leaf for k in ("malloc", "free", "memmove", "memcpy", "memcmp", "memset", "bytes::")):
        return "allocator, copies"
    if leaf.startswith(("alloc::", "hashbrown", "core::", "<core")) or "Hasher" in leaf:
        return "std collections"
    return "other"


def main():
    top = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--top" else None
    groups, leaves, n = collections.Counter(), collections.Counter(), 0
    for frames in samples(sys.stdin):
        g = group(frames)
        groups[g] += 1
        leaves[(g, frames[0])] += 1
        n += 1
    if not n:
        sys.exit("no samples on stdin")
    print(f"{n} samples")
    for g, count in groups.most_common():
        print(f"{100 * count / n:5.1f} %  {g}")
    if top:
        for (g, leaf), count in leaves.most_common():
            if g == top:
                print(f"{100 * count / n:5.2f} %  {leaf[:120]}")


if __name__ == "__main__":
    main()
