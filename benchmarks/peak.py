"""The machine's float32 and bfloat16 peak: theoretical from the CPU's description, and measured.

    python benchmarks/peak.py                      # 4096^2 matmuls, best of 5
    python benchmarks/peak.py --size 8192 --repeats 3

Theoretical peak = cores x FMA units x vector lanes x 2 (multiply and add) x clock,
with every factor read from the CPU's own description (``/proc/cpuinfo``,
``lscpu``) except the FMA units per core, which no CPU reports: they come from a
table of microarchitectures (``MICROARCHITECTURES``), identified by vendor, family
and model number, each entry naming where its figure comes from. Cores are those
this process may run on (``os.sched_getaffinity``).

Measured peak: the best of ``--repeats`` large matmul calls per dtype (after a
warm-up call), as GFLOP/s = 2 n^3 / seconds, in the same run: ``tf.linalg.matmul``
in a ``tf.function`` on TensorFlow, a jitted ``jax.numpy.matmul`` on JAX (Keras'
backend, ``KERAS_BACKEND``), on the backend's default device.

Under a hypervisor the clock in ``/proc/cpuinfo`` is the nominal one; the cores
may run faster (turbo), so a measured peak above 100% of the theoretical one means
the clock is higher than reported, not that the formula is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

DTYPES = ("float32", "bfloat16")

# Intel: "4th Gen Intel Xeon Scalable processors can perform 2048 INT8 or 1024 BF16
# operations per cycle" per core with AMX (Intel's AMX overview and Architecture
# Day 2021 material); operations = FLOPs (a multiply-add counts 2).
AMX_BF16_FLOPS_PER_CYCLE = 1024


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """What the CPU says about itself.

    Attributes:
        model_name: ``model name`` of /proc/cpuinfo.
        vendor: ``vendor_id`` (GenuineIntel, AuthenticAMD).
        family: CPU family number.
        model: CPU model number.
        flags: instruction-set flags.
        cores: logical CPUs this process may run on.
        threads_per_core: from lscpu (1 when unknown); SMT siblings share FMA units.
        clock_ghz: the highest clock the system reports.
        clock_source: where ``clock_ghz`` was read.
    """

    model_name: str
    vendor: str
    family: int
    model: int
    flags: frozenset
    cores: int
    threads_per_core: int
    clock_ghz: float
    clock_source: str

    @property
    def physical_cores(self) -> int:
        """Cores with their own FMA units among those available."""
        return max(1, self.cores // self.threads_per_core)


@dataclasses.dataclass(frozen=True)
class Microarchitecture:
    """FMA resources of one core.

    Attributes:
        name: the microarchitecture.
        fma_units: floating-point FMA pipes per core.
        fma_bits: width of each pipe's datapath; a wider instruction (AVX-512 on a
            256-bit pipe) is split, so lanes per pipe = min(ISA, datapath) / 32.
        source: where ``fma_units`` and ``fma_bits`` come from.
    """

    name: str
    fma_units: int
    fma_bits: int
    source: str


@dataclasses.dataclass(frozen=True)
class _Rule:
    """A row of ``MICROARCHITECTURES``: matches vendor, family, models and flags."""

    vendor: str
    family: int
    models: tuple[int, ...] | None  # None: any model of the family
    needs_flag: str | None
    uarch: Microarchitecture


_INTEL_OPT = "Intel 64 and IA-32 Architectures Optimization Reference Manual"
_SERVER_512 = "2 AVX-512 FMA units (ports 0+1 fused and port 5), " + _INTEL_OPT
MICROARCHITECTURES = (
    _Rule("AuthenticAMD", 0x1A, None, None, Microarchitecture(
        "AMD Zen 5", 2, 512, "2 FMA pipes with native 512-bit datapaths on desktop/server parts (mobile "
        "parts keep 256-bit ones), A. Yee, Zen 5 AVX-512 teardown, numberworld.org 2024")),
    _Rule("AuthenticAMD", 0x19, None, "avx512f", Microarchitecture(
        "AMD Zen 4", 2, 256, "Zen 3's 2 FMA + 2 FADD pipes of 256 bits, which run each AVX-512 instruction "
        "as two halves, so one 512-bit FMA per cycle (AMD Zen 4 optimization guide; A. Yee's Zen 4/Zen 5 "
        "AVX-512 teardowns, numberworld.org)")),
    _Rule("AuthenticAMD", 0x19, None, None, Microarchitecture(
        "AMD Zen 3", 2, 256, "2 FMA + 2 FADD pipes of 256 bits (AMD Zen 3 optimization guide)")),
    _Rule("AuthenticAMD", 0x17, None, None, Microarchitecture(
        "AMD Zen/Zen 2", 2, 256, "Zen 2: 2 FMA pipes of 256 bits (AMD Zen 2 optimization guide); Zen/Zen+ "
        "have 128-bit pipes, which this overestimates 2x")),
    _Rule("GenuineIntel", 6, (0x8F, 0xCF, 0xAD, 0xAE), None, Microarchitecture(
        "Intel Sapphire/Emerald/Granite Rapids", 2, 512, _SERVER_512)),
    _Rule("GenuineIntel", 6, (0x6A, 0x6C), None, Microarchitecture(
        "Intel Ice Lake-SP", 2, 512, _SERVER_512)),
    _Rule("GenuineIntel", 6, (0x55,), None, Microarchitecture(
        "Intel Skylake-SP/Cascade Lake", 2, 512, _SERVER_512 + "; Bronze, Silver and most Gold 5xxx "
        "parts have one (see _xeon_fma_units)")),
    _Rule("GenuineIntel", 6, (0x7D, 0x7E, 0x8C, 0x8D, 0xA7), None, Microarchitecture(
        "Intel Ice Lake/Tiger Lake/Rocket Lake client", 1, 512, "client cores: 1 AVX-512 FMA unit "
        "(ports 0+1 fused), or 2 of 256 bits for AVX2, " + _INTEL_OPT)),
    _Rule("GenuineIntel", 6, None, "fma", Microarchitecture(
        "Intel Haswell or later (AVX2)", 2, 256, "2 FMA units of 256 bits (ports 0 and 1), " + _INTEL_OPT)),
)


def _xeon_fma_units(model_name: str, uarch: Microarchitecture) -> Microarchitecture:
    """Skylake-SP/Cascade Lake Bronze, Silver and Gold 5xxx Xeons have one AVX-512 FMA unit."""
    if uarch.name.startswith("Intel Skylake-SP") and re.search(r"Bronze|Silver|Gold 5\d", model_name):
        return dataclasses.replace(uarch, fma_units=1)
    return uarch


def identify_microarchitecture(cpu: CpuInfo) -> Microarchitecture:
    """The first ``MICROARCHITECTURES`` row matching the CPU; an explicit assumption otherwise."""
    for rule in MICROARCHITECTURES:
        if (
            rule.vendor == cpu.vendor
            and rule.family == cpu.family
            and (rule.models is None or cpu.model in rule.models)
            and (rule.needs_flag is None or rule.needs_flag in cpu.flags)
        ):
            return _xeon_fma_units(cpu.model_name, rule.uarch)
    width = 512 if "avx512f" in cpu.flags else 256 if "avx" in cpu.flags else 128
    return Microarchitecture(
        f"unknown ({cpu.vendor} family {cpu.family} model {cpu.model})", 2, width,
        "ASSUMED: 2 FMA units as wide as the widest vector ISA (not in MICROARCHITECTURES)",
    )


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``key: value`` fields of /proc/cpuinfo."""
    fields = {}
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _lscpu_fields() -> dict[str, str]:
    """``lscpu`` as a dict; empty when lscpu is missing."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def _clock(cpuinfo: dict[str, str], lscpu: dict[str, str]) -> tuple[float, str]:
    """The highest clock reported: lscpu's max MHz, cpufreq's max, the model name's, else cpu MHz."""
    if lscpu.get("CPU max MHz"):
        return float(lscpu["CPU max MHz"]) / 1000, "lscpu CPU max MHz"
    cpufreq = pathlib.Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if cpufreq.is_file():
        return int(cpufreq.read_text()) / 1e6, str(cpufreq)
    match = re.search(r"@\s*([\d.]+)\s*GHz", cpuinfo.get("model name", ""))
    if match:
        return float(match.group(1)), "model name (base clock)"
    if "cpu MHz" in cpuinfo:
        return float(cpuinfo["cpu MHz"]) / 1000, "/proc/cpuinfo cpu MHz (nominal; no max clock reported)"
    raise RuntimeError("/proc/cpuinfo: no clock (no 'cpu MHz'), and lscpu and cpufreq report none")


def read_cpu_info() -> CpuInfo:
    """Reads /proc/cpuinfo and lscpu (Linux)."""
    cpuinfo, lscpu = _cpuinfo_fields(), _lscpu_fields()
    if "flags" not in cpuinfo:
        raise RuntimeError("/proc/cpuinfo: no 'flags' line; peak.py needs an x86 Linux machine")
    clock_ghz, clock_source = _clock(cpuinfo, lscpu)
    return CpuInfo(
        model_name=cpuinfo.get("model name", platform.processor()),
        vendor=cpuinfo.get("vendor_id", ""),
        family=int(cpuinfo.get("cpu family", 0)),
        model=int(cpuinfo.get("model", 0)),
        flags=frozenset(cpuinfo["flags"].split()),
        cores=len(os.sched_getaffinity(0)),
        threads_per_core=int(lscpu.get("Thread(s) per core", 1)),
        clock_ghz=clock_ghz,
        clock_source=clock_source,
    )


@dataclasses.dataclass(frozen=True)
class TheoreticalPeak:
    """One dtype's theoretical peak.

    Attributes:
        dtype: ``"float32"`` or ``"bfloat16"``.
        flops_per_cycle: FLOPs per cycle per core.
        gflops: whole-machine GFLOP/s (cores x flops_per_cycle x clock).
        formula: how it was computed, with numbers.
    """

    dtype: str
    flops_per_cycle: int
    gflops: float
    formula: str


def vector_lanes(cpu: CpuInfo) -> int:
    """float32 lanes of the widest vector FMA instruction the CPU has."""
    if "avx512f" in cpu.flags:
        return 16
    if "avx2" in cpu.flags or "fma" in cpu.flags:
        return 8
    return 4


def theoretical_peaks(cpu: CpuInfo, uarch: Microarchitecture | None = None) -> dict[str, TheoreticalPeak]:
    """float32 and bfloat16 theoretical peaks of the cores available to this process.

    float32: cores x FMA units x lanes x 2 x clock, lanes = min(ISA lanes, datapath
    bits / 32). bfloat16: AMX (``amx_bf16``) does ``AMX_BF16_FLOPS_PER_CYCLE`` per
    core; AVX512_BF16's VDPBF16PS does two bf16 products per float32 lane, twice
    the float32 rate on the same FMA units (Intel: VDPBF16PS issues on the FMA
    ports; assumed for AMD Zen 4, whose measured bf16 matmul confirms it); without
    either, bfloat16 runs as float32 (converted), at the float32 peak.
    """
    uarch = uarch or identify_microarchitecture(cpu)
    cores, clock = cpu.physical_cores, cpu.clock_ghz
    lanes = min(vector_lanes(cpu), uarch.fma_bits // 32)
    fp32 = uarch.fma_units * lanes * 2
    fp32_formula = f"{cores} cores x {uarch.fma_units} FMA units x {lanes} lanes x 2 x {clock:.3f} GHz"
    if "amx_bf16" in cpu.flags:
        bf16 = AMX_BF16_FLOPS_PER_CYCLE
        bf16_formula = f"{cores} cores x {AMX_BF16_FLOPS_PER_CYCLE} (AMX) x {clock:.3f} GHz"
    elif "avx512_bf16" in cpu.flags:
        bf16, bf16_formula = 2 * fp32, fp32_formula + " x 2 (AVX512_BF16 pairs)"
    else:
        bf16, bf16_formula = fp32, fp32_formula + " (no bf16 arithmetic: as float32)"
    return {
        "float32": TheoreticalPeak("float32", fp32, cores * fp32 * clock, fp32_formula),
        "bfloat16": TheoreticalPeak("bfloat16", bf16, cores * bf16 * clock, bf16_formula),
    }


def matmul_call(dtype: str, size: int):
    """Returns a function running one ``size``-square matmul in ``dtype`` on Keras'
    backend to completion (2 size^3 FLOPs); its first call traces it."""
    if keras.backend.backend() == "jax":
        import jax

        key_a, key_b = jax.random.split(jax.random.key(0))
        a = jax.random.normal(key_a, (size, size)).astype(dtype)
        b = jax.random.normal(key_b, (size, size)).astype(dtype)
        matmul = jax.jit(jax.numpy.matmul)
        return lambda: matmul(a, b).block_until_ready()
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((size, size), (0, 1)), dtype)
    b = tf.cast(tf.random.stateless_normal((size, size), (0, 2)), dtype)
    matmul = tf.function(tf.linalg.matmul)
    return lambda: matmul(a, b).numpy()


def backend_line() -> str:
    """Keras' backend and its version, e.g. ``TensorFlow 2.21.0`` or ``JAX 0.10.2``."""
    if keras.backend.backend() == "jax":
        import jax

        return f"JAX {jax.__version__} ({jax.devices()[0].platform}: {jax.devices()[0].device_kind})"
    import tensorflow as tf

    return f"TensorFlow {tf.__version__}"


def measured_peaks(size: int = 4096, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s (2 size^3 / seconds) of the fastest of ``repeats`` matmul (``matmul_call``)
    calls per dtype of ``DTYPES``, the dtypes alternating, after a warm-up call each."""
    calls = {dtype: matmul_call(dtype, size) for dtype in DTYPES}
    for call in calls.values():
        call()
    best = dict.fromkeys(DTYPES, float("inf"))
    for _ in range(repeats):
        for dtype, call in calls.items():
            start = time.perf_counter()
            call()
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return {dtype: 2 * size**3 / best[dtype] / 1e9 for dtype in DTYPES}


def machine_key(cpu: CpuInfo, uarch: Microarchitecture | None = None) -> str:
    """A short name of the machine for cache keys and table headers."""
    uarch = uarch or identify_microarchitecture(cpu)
    return f"{cpu.model_name} ({uarch.name}), {cpu.cores} cores"


_SHOWN_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"})


def command_line(script: str, argv=None) -> str:
    """The command that runs the benchmark ``script`` (its ``__file__``) with ``argv``
    (default: this process's arguments), for table headers."""
    arguments = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{pathlib.Path(script).name}", *arguments])


def header_lines(command: str) -> list[str]:
    """Machine, TensorFlow/Keras versions, the 1-minute load average and ``command``,
    for the header of a benchmark table."""
    cpu = read_cpu_info()
    return [
        f"Machine: {machine_key(cpu)}, flags {', '.join(sorted(cpu.flags & _SHOWN_FLAGS))}",
        f"{backend_line()}, Keras {keras.__version__}, Python {platform.python_version()}; "
        f"1-minute load average at start: {os.getloadavg()[0]:.2f}",
        f"Command: `{command}`",
    ]


def implied_clock_ghz(cpu: CpuInfo, theoretical: dict, measured: dict) -> float:
    """The clock at which the measured float32 matmul would be exactly the theoretical peak."""
    return measured["float32"] / (cpu.physical_cores * theoretical["float32"].flops_per_cycle)


def render(cpu: CpuInfo, uarch: Microarchitecture, theoretical: dict, measured: dict, command: str) -> str:
    """Markdown: header, FMA assumption and the peak table."""
    lines = [*header_lines(command), ""]
    lines += [
        f"Microarchitecture: {uarch.name}; FMA units: {uarch.source}.",
        f"Clock: {cpu.clock_ghz:.3f} GHz from {cpu.clock_source}; on an idle machine the float32 "
        f"matmul's rate would mean {implied_clock_ghz(cpu, theoretical, measured):.2f} GHz.",
        "",
        "| dtype | FLOPs/cycle/core | theoretical GFLOP/s | formula | measured GFLOP/s (matmul) "
        "| measured / theoretical |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for dtype in DTYPES:
        peak = theoretical[dtype]
        lines.append(
            f"| {dtype} | {peak.flops_per_cycle} | {peak.gflops:.1f} | {peak.formula} "
            f"| {measured[dtype]:.1f} | {measured[dtype] / peak.gflops:.0%} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="matmul side (default: 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="timed matmuls per dtype, best kept (default: 5)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, argv)
    cpu = read_cpu_info()
    uarch = identify_microarchitecture(cpu)
    theoretical = theoretical_peaks(cpu, uarch)
    measured = measured_peaks(args.size, args.repeats)
    print(render(cpu, uarch, theoretical, measured, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
