"""keep_freed_cpu_memory: large CPU tensors come from the heap (no fresh mmap per tensor) once it is applied.

Each check runs in a fresh interpreter: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plc_monai.cpu_allocator import keep_freed_cpu_memory

REPO = Path(__file__).resolve().parents[1]


def _has_glibc_mallinfo2() -> bool:
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version
        libc.mallinfo2
    except (OSError, AttributeError):
        return False
    return True


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


MMAPPED_BYTES = """
    import ctypes, ctypes.util, torch
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    def mmapped_while_holding(nbytes):
        before = libc.mallinfo2().hblkhd
        t = torch.empty(nbytes // 4, dtype=torch.float32)
        t.fill_(1.0)
        during = libc.mallinfo2().hblkhd
        del t
        return during - before
"""


@pytest.mark.skipif(not _has_glibc_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_large_tensors_leave_mmap_for_the_heap_once_applied() -> None:
    size = 64 << 20  # a 64 MiB tensor, above glibc's largest dynamic mmap threshold (32 MiB)
    out = _run(MMAPPED_BYTES + f"""
    first = mmapped_while_holding({size})
    from plc_monai.cpu_allocator import keep_freed_cpu_memory, cpu_memory_kept
    assert not cpu_memory_kept()
    assert keep_freed_cpu_memory() and keep_freed_cpu_memory() and cpu_memory_kept()
    second = mmapped_while_holding({size})
    print(first, second)
    """)
    default_mmapped, kept_mmapped = (int(v) for v in out.split())
    assert default_mmapped >= 64 << 20  # glibc's default: the tensor got its own mapping
    assert kept_mmapped == 0  # kept: served from the heap, where freed memory stays for the next step


def test_trainer_applies_it_on_cpu_unless_told_not_to() -> None:
    out = _run("""
    import torch
    from monai.losses import DiceLoss
    from plc_monai.cpu_allocator import cpu_memory_kept
    from plc_monai.data.slice_pool import SlicePool
    from plc_monai.engines import SemiSupervisedTrainer
    from plc_monai.networks import ContrastiveHeadUNet
    net = ContrastiveHeadUNet(num_classes=2, channels=(4, 8), embedding_dim=4)
    pool = SlicePool(images=torch.rand(4, 1, 16, 16), labels=torch.zeros(4, 16, 16, dtype=torch.uint8),
                     volume_index=torch.zeros(4, dtype=torch.long), slice_index=torch.arange(4), volume_ids=["v"])
    def trainer(tune):
        return SemiSupervisedTrainer(device="cpu", max_epochs=1, epoch_length=2, network=net,
                                     optimizer=torch.optim.Adam(net.parameters()), seg_loss=DiceLoss(to_onehot_y=True),
                                     labeled=pool, warmup_iterations=2, batch_size=2, labeled_per_batch=2,
                                     tune_cpu_allocator=tune)
    trainer(False)
    after_off = cpu_memory_kept()
    trainer(True)
    print(after_off, cpu_memory_kept())
    """)
    expected = "False True" if platform.system() == "Linux" else "False False"
    assert out.splitlines()[-1] == expected


@pytest.mark.parametrize("kwargs", [{"mmap_threshold": 0}, {"trim_threshold": -1}, {"top_pad": 1.5}, {"top_pad": True}])
def test_bad_values_are_rejected(kwargs) -> None:
    with pytest.raises(ValueError, match="positive number of bytes"):
        keep_freed_cpu_memory(**kwargs)
