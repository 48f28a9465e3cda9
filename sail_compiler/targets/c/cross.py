"""Cross builds of the c target for 64-bit ARM, and running them under qemu-user.

``sail build OUT --cross aarch64`` (or ``make CC=aarch64-linux-gnu-gcc`` in the artifact) builds
the library and runners for AArch64 with Debian's cross compiler; the LUT-GEMV kernels are then
the NEON ones (``runtime/sail_lut_neon.c``). Two targets:

``aarch64``
    ``-march=armv8-a``: any 64-bit ARM CPU (Raspberry Pi 3/4, Cortex-A53/A72); the codes kernels
    multiply with widening NEON multiply-adds.
``aarch64-dotprod``
    ``-march=armv8.2-a+dotprod``: CPUs with the dot product instructions (Neoverse N1 /
    Graviton 2 and later, Ampere Altra, Apple M1, Cortex-A76 / Raspberry Pi 5); the codes
    kernels use ``sdot``.

On an x86-64 machine the binaries run under ``qemu-aarch64 -L /usr/aarch64-linux-gnu`` (the
target's libc): :func:`run_prefix` gives the command prefix for a binary by reading its ELF
header, so ``sail verify``, ``sail run`` and ``sail_generate`` work on a cross-built artifact.
The packages: ``apt-get install crossbuild-essential-arm64 qemu-user``.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from pathlib import Path

from ...errors import OptionError, SailError, valid_choices

#: Debian's packages of the toolchain and the emulator.
DEBIAN_PACKAGES = "crossbuild-essential-arm64 qemu-user"
#: ELF e_machine of AArch64.
EM_AARCH64 = 183


@dataclasses.dataclass(frozen=True)
class CrossTarget:
    """One cross build: the GNU triple of its toolchain, its ``-march`` and the qemu CPU that
    runs it (the least CPU with the instructions the build uses)."""

    name: str
    triple: str
    march: str
    qemu_cpu: str
    sysroot: Path
    qemu: str = "qemu-aarch64"

    @property
    def cc(self) -> str:
        return f"{self.triple}-gcc"

    @property
    def make_args(self) -> tuple[str, ...]:
        """``make`` arguments of the build: the runtime Makefile takes a cross compiler's
        ``-march`` from ``CROSS_MARCH`` and finds its ``ar``."""
        return (f"CC={self.cc}", f"CROSS_MARCH={self.march}")

    def check_compiler(self) -> None:
        """:class:`SailError` naming the packages unless the cross compiler is installed."""
        if shutil.which(self.cc) is None:
            raise SailError(f"--cross {self.name} needs the cross compiler {self.cc}, which is "
                            f"not installed; on Debian or Ubuntu: apt-get install "
                            f"{DEBIAN_PACKAGES}")

    def check_emulator(self) -> None:
        """:class:`SailError` naming the packages unless qemu and the target's libc are here."""
        if shutil.which(self.qemu) is None or not (self.sysroot / "lib").is_dir():
            raise SailError(f"running an {self.triple.split('-')[0]} build on this "
                            f"{platform.machine()} machine needs {self.qemu} and the target's "
                            f"libc in {self.sysroot}; on Debian or Ubuntu: apt-get install "
                            f"{DEBIAN_PACKAGES}")

    def qemu_command(self, cpu: str | None = None) -> list[str]:
        """``qemu-aarch64 -L SYSROOT -cpu CPU``: the prefix that runs a binary of this build."""
        self.check_emulator()
        return [self.qemu, "-L", str(self.sysroot), "-cpu", cpu or self.qemu_cpu]


_SYSROOT = Path("/usr/aarch64-linux-gnu")
CROSS_TARGETS: dict[str, CrossTarget] = {
    "aarch64": CrossTarget("aarch64", "aarch64-linux-gnu", "armv8-a", "cortex-a72",
                           _SYSROOT),
    "aarch64-dotprod": CrossTarget("aarch64-dotprod", "aarch64-linux-gnu",
                                   "armv8.2-a+dotprod", "neoverse-n1", _SYSROOT),
}


def cross_target(name: str) -> CrossTarget:
    """The cross target called ``name``; :class:`OptionError` for an unknown one."""
    if name not in CROSS_TARGETS:
        raise OptionError(f"unknown --cross target {name!r}; {valid_choices(list(CROSS_TARGETS))}")
    return CROSS_TARGETS[name]


def elf_machine(path: Path) -> int | None:
    """The ELF ``e_machine`` of a little-endian executable, or None if it is not one."""
    try:
        with path.open("rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] != 1:
        return None
    return int.from_bytes(head[18:20], "little")


def host_is_aarch64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def run_prefix(binary: Path) -> list[str]:
    """The command prefix that runs ``binary`` here: none for this machine's binaries, qemu
    (``-cpu max``: every instruction either AArch64 build uses) for an AArch64 one on another
    machine."""
    if elf_machine(binary) == EM_AARCH64 and not host_is_aarch64():
        return CROSS_TARGETS["aarch64"].qemu_command("max")
    return []
