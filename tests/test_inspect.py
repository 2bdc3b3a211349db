"""Static inspection: `tritonlab inspect` compiles kernels for sm_80 / sm_90a without
a GPU. Its numbers are checked against the NVIDIA tools run here on the same cubin, the
occupancy arithmetic against hand-worked cases, and every GEMM-family kernel (each op whose
SPEC declares compile_targets) against the static performance bar: tensor-core instructions
on both architectures and no spills in its main configs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import triton
from click.testing import CliRunner
from conftest import run_cli

from tritonlab.errors import UsageError
from tritonlab.kernels.tuning import CompileTarget, config_dict
from tritonlab.ops import registry
from tritonlab.ops.contract import OpSpec
from tritonlab.ops.matmul import MatmulOp
from tritonlab.static import api as insp
from tritonlab.static import sass as inspect_sass

ARCHS = ("sm_80", "sm_90a")
MAIN = 2  # matmul end to end: the first two configs of each architecture's list
# The static GEMM test checks each kernel's first config per architecture (the default, used
# when autotuning is off); TRITONLAB_STATIC_CONFIGS=N checks the first N (each compile costs
# 1-2 s of CPU).
STATIC_CONFIGS = int(os.environ.get("TRITONLAB_STATIC_CONFIGS", "1"))
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One fresh compile cache for this module: hermetic, and each kernel compiles once."""
    root = tmp_path_factory.mktemp("tritonlab-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITONLAB_CACHE_DIR", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def inspected(cache, tmp_path_factory):
    """`tritonlab inspect matmul --arch sm_80 --arch sm_90a --first 2 --dump D --json`."""
    dump = tmp_path_factory.mktemp("dump")
    r = run_cli("inspect", "matmul", "--arch", "sm_80", "--arch", "sm_90a", "--first", str(MAIN),
                "--dump", str(dump), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), dump


# ------------------------------------------------------------------------------ occupancy

# Worked by hand with the CUDA occupancy calculator's rules: registers per warp rounded up
# to 256 and shared per partition (4 per SM), 1 KB of shared memory reserved per block,
# shared memory rounded up to 128 bytes.
OCCUPANCY_CASES = [
    # arch, regs, threads, smem -> blocks/SM, warps/SM, limiter
    ("sm_80", 32, 256, 0, 8, 64, ["registers", "warps"]),
    ("sm_80", 247, 128, 49152, 2, 8, ["registers"]),  # 7936 regs/warp: 2 warps/partition
    ("sm_90a", 210, 256, 148480, 1, 8, ["registers", "shared_memory"]),
    ("sm_89", 32, 128, 0, 12, 48, ["warps"]),  # Ada: 48 warps per SM
    ("sm_80", 64, 1024, 0, 1, 32, ["registers"]),  # 64 regs x 1024 threads = the 64K file
    ("sm_86", 40, 96, 0, 16, 48, ["registers", "warps", "blocks"]),
    ("sm_90a", 32, 128, 170000, 1, 4, ["shared_memory"]),
]


@pytest.mark.parametrize("arch,regs,threads,smem,blocks,warps,limiter", OCCUPANCY_CASES)
def test_occupancy_known_cases(arch, regs, threads, smem, blocks, warps, limiter):
    a = insp.parse_arch(arch)
    occ = insp.occupancy(a, regs, threads, smem)
    assert occ["fits"] and occ["reason"] is None
    assert occ["blocks_per_sm"] == blocks
    assert occ["warps_per_sm"] == warps
    assert occ["occupancy"] == pytest.approx(warps / a.max_warps_per_sm)
    assert occ["limiter"] == limiter


@pytest.mark.parametrize("arch,regs,threads,smem,why", [
    ("sm_80", 65, 1024, 0, "registers per block"),  # 2304 regs/warp x 32 warps > 65536
    ("sm_80", 32, 128, 170000, "shared memory"),  # over A100's 163 KB per block
    ("sm_89", 32, 128, 101377, "shared memory"),  # over Ada's 99 KB per block
    ("sm_90a", 32, 2048, 0, "threads per block"),
])
def test_occupancy_cannot_launch(arch, regs, threads, smem, why):
    occ = insp.occupancy(insp.parse_arch(arch), regs, threads, smem)
    assert not occ["fits"] and occ["blocks_per_sm"] == 0 and occ["occupancy"] == 0
    assert why in occ["reason"]


# ------------------------------------------------------------------------- parsing inputs

def test_parse_arch_names_aliases_and_errors():
    assert insp.parse_arch("sm_90").name == "sm_90a"  # Triton compiles 9.0 as sm_90a
    assert insp.parse_arch("SM_80").cc == 80
    assert insp.parse_arch((9, 0)).name == "sm_90a"
    assert insp.parse_arch((8, 9)).name == "sm_89"
    for bad in ("sm_70", "hopper", (7, 5)):
        with pytest.raises(UsageError, match="supported: sm_80, sm_86, sm_89, sm_90a, sm_100a"):
            insp.parse_arch(bad)


def test_parse_config():
    assert insp.parse_config("BLOCK_M=128, BLOCK_N=64,num_warps=8,FLAG=true,P=tf32") == {
        "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "FLAG": True, "P": "tf32"}
    for bad in ("BLOCK_M", "BLOCK_M=", "=4", ",", ""):
        with pytest.raises(UsageError):
            insp.parse_config(bad)


def test_specialisation_follows_the_jit():
    """Unit strides become constants, multiples of 16 are marked divisible, pointers take
    the op's dtype, and the EVEN_K heuristic sees the config's BLOCK_K."""
    target = registry.discover()["matmul"].compile_targets(torch.bfloat16)[0]  # tiled
    cfg = insp.target_configs(target, insp.parse_arch("sm_90a"))[0]
    spec = insp.specialise(target, cfg)
    sig = spec["signature"]
    assert sig["a_ptr"] == sig["c_ptr"] == "*bf16"
    assert sig["M"] == "i32" and sig["stride_ak"] == "constexpr"
    assert spec["constexprs"]["stride_ak"] == 1
    assert spec["constexprs"]["EVEN_K"] is True
    assert spec["constexprs"]["BLOCK_K"] == cfg["BLOCK_K"]
    assert {"a_ptr", "b_ptr", "c_ptr", "M", "N", "K", "stride_am"} <= set(spec["divisible"])
    assert spec["options"] == {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    odd = insp.specialise(target, {**cfg, "BLOCK_K": 48})
    assert odd["constexprs"]["EVEN_K"] is False  # 4096 % 48 != 0
    with pytest.raises(ValueError, match="no argument"):
        insp.specialise(target, {**cfg, "BLOCK_Q": 1})


_MODULE = """
import triton
import triton.language as tl

SCALE = tl.constexpr({scale})


@triton.jit
def helper(x):
    return x * {factor}


@triton.jit
def kernel(x_ptr, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, helper(tl.load(x_ptr + offs)) * SCALE, mask=offs < N)


def launcher():
    return {launcher}
"""


def test_cache_key_follows_the_code_the_kernel_calls(tmp_path, monkeypatch):
    """The source digest in the cache key changes with a called helper or a constexpr global,
    not with unrelated code of the same module (a launcher edit recompiles nothing)."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))

    def digest(**parts):
        name = f"inspect_probe_{len(list(tmp_path.iterdir()))}"
        (tmp_path / f"{name}.py").write_text(_MODULE.format(**parts))
        return insp.source_digest(importlib.import_module(name).kernel)

    base = digest(scale=1, factor=2, launcher=0)
    assert digest(scale=1, factor=2, launcher=1) == base
    assert digest(scale=1, factor=3, launcher=0) != base
    assert digest(scale=2, factor=2, launcher=0) != base


_DYING = """
import multiprocessing
import os

import triton
import triton.language as tl

if multiprocessing.parent_process() is not None:  # only in compile workers
    os._exit(3)


@triton.jit
def kernel(x_ptr, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2, mask=offs < N)
"""


def test_a_dying_compile_worker_is_reported_not_cached(tmp_path, monkeypatch):
    """Each job whose worker dies is reported (a fresh worker takes the next one), and
    nothing is cached for it."""
    import importlib

    (tmp_path / "inspect_dying_probe.py").write_text(_DYING)
    monkeypatch.syspath_prepend(str(tmp_path))
    kernel = importlib.import_module("inspect_dying_probe").kernel
    configs = [{"BLOCK": 64, "num_warps": 4}, {"BLOCK": 128, "num_warps": 4}]

    class Probe(MatmulOp):
        name = "probe"

        def compile_targets(self, dtype):
            return [CompileTarget("k", kernel, dtype, {"N": 4096}, configs)]

    op = Probe()
    report = insp.run([op], [insp.parse_arch("sm_80")], [torch.float16])
    assert [r["status"] for r in report.rows] == ["error", "error"]
    assert all("compile worker died while compiling this config" in r["error"]
               for r in report.rows)
    assert not any((insp.cache_dir() / r["key"][:2] / r["key"]).exists() for r in report.rows)


# --------------------------------------------------------------------------- tool parsers

_SASS = """
\tcode for sm_90a
\t\tFunction : k
        /*0000*/                   LDC R1, c[0x0][0x28] ;            /* 0x00000a00ff017b82 */
                                                                     /* 0x000fe40000000f00 */
        /*0010*/              @!P1 HGMMA.64x256x16.F32 R24, gdesc[UR8].tnspB, R24 ;
        /*0020*/               @P0 LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   LDG.E R5, desc[UR4][R2.64] ;
        /*0040*/                   LDG.E.U16 R6, desc[UR4][R2.64] ;
        /*0050*/                   STG.E.64 desc[UR4][R2.64], R4 ;
        /*0060*/                   LDGSTS.E.BYPASS.128 [R5], desc[UR14][R24.64], P2 ;
        /*0070*/             @!UPT UTMALDG.2D [UR8], [UR4] ;
        /*0080*/                   FFMA R1, R2, R3, R4 ;
        /*0090*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00a0*/                   STL [R1], R2 ;
        /*00b0*/                   HMMA.16816.F32 R0, R4, R8, R0 ;
        /*00c0*/                   LDSM.16.M88.4 R8, [R3] ;
"""


def test_sass_instruction_mix():
    ops = inspect_sass.sass_opcodes(_SASS)
    assert sum(ops.values()) == 13
    mix = inspect_sass.instruction_mix(ops)
    assert mix["tensor_core"] == {"HGMMA.64x256x16.F32": 1, "HMMA.16816.F32": 1}
    assert mix["tensor_core_total"] == 2
    assert mix["global_load_bits"] == {"128": 1, "32": 1, "16": 1}
    assert mix["global_store_bits"] == {"64": 1}
    assert mix["async_copy"] == {"LDGSTS": 1, "UTMALDG": 1}
    assert mix["fp32"] == {"FFMA": 1} and mix["barrier"] == {"BAR": 1}
    assert mix["local"] == {"STL": 1} and mix["shared"] == {"LDSM": 1}
    assert inspect_sass.sass_arch(_SASS) == "sm_90a"


def test_ptxas_and_cuobjdump_parsers():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "ptxas info    : Function properties for k\n"
           "    64 bytes stack frame, 24 bytes spill stores, 32 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 416 bytes cmem[0]\n")
    assert inspect_sass.parse_ptxas_log(log) == {
        "registers": 255, "stack_frame": 64, "spill_stores": 24, "spill_loads": 32, "smem": 0}
    assert inspect_sass.parse_ptxas_log("ptxas info: nothing") is None
    usage = ("Resource usage:\n Common:\n  GLOBAL:0\n Function k:\n"
             "  REG:210 STACK:0 SHARED:1024 LOCAL:8 CONSTANT[0]:592 TEXTURE:0\n")
    assert inspect_sass.parse_resource_usage(usage)["k"] == {
        "REG": 210, "STACK": 0, "SHARED": 1024, "LOCAL": 8, "CONSTANT[0]": 592, "TEXTURE": 0}
    assert inspect_sass.ptx_threads(".visible .entry k(\n)\n.reqntid 256\n{") == 256
    assert inspect_sass.ptx_threads(".maxntid 128, 1, 1\n") == 128


# ------------------------------------------------------------------ matmul, end to end

def _rows(doc, arch):
    return [r for r in doc["kernels"] if r["arch"] == arch]


def _cuobjdump(cubin: Path) -> dict[str, int]:
    """REG and SHARED as the wheel's cuobjdump reports them, parsed independently."""
    out = subprocess.run([str(TOOLS / "cuobjdump"), "--dump-resource-usage", str(cubin)],
                         capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|SHARED|LOCAL):(\d+)", out)}


def _dump_dir(dump: Path, row) -> Path:
    return (dump / row["op"] / row["target"] / row["arch"] / row["dtype"]
            / insp.config_slug(row["config"]))


def test_json_document_covers_both_archs(inspected):
    """Each target of matmul (the tiled kernel, the split-K decode kernel and its reduction)
    on each architecture, in its first configs, compiled, for the requested cubin."""
    doc, _ = inspected
    assert doc["passed"] is True and doc["archs"] == list(ARCHS) and doc["dtypes"] == ["float16"]
    targets = registry.discover()["matmul"].compile_targets(torch.float16)
    for arch in ARCHS:
        listed = insp.parse_arch(arch)
        rows = _rows(doc, arch)
        assert [(r["target"], r["config"]) for r in rows] == [
            (t.name, c) for t in targets for c in insp.target_configs(t, listed)[:MAIN]]
        for r in rows:
            assert r["status"] == "ok" and r["error"] is None and r["cubin_arch"] == arch
            assert r["kernel"] == targets[[t.name for t in targets].index(r["target"])] \
                .kernel_name
            assert r["threads"] == 32 * r["config"]["num_warps"]
            assert r["occupancy"] == insp.occupancy(listed, r["registers"], r["threads"],
                                                    r["smem_bytes"])
            assert 0 < r["occupancy"]["occupancy"] <= 1


def test_tensor_core_instructions_per_arch(inspected):
    doc, _ = inspected
    for r in doc["kernels"]:
        tc = r["instructions"]["tensor_core"]
        if r["target"] == "decode_reduce":
            assert not tc  # a sum of fp32 partials: no matmul
        elif r["arch"] == "sm_80" or r["target"] == "decode":
            # mma.sync; on Hopper too for the decode kernel's 16-row tiles (wgmma needs 64)
            assert any(k.startswith("HMMA") for k in tc) and not any("GMMA" in k for k in tc)
            assert r["instructions"]["async_copy"].get("LDGSTS", 0) > 0  # cp.async pipeline
        else:
            assert any(k.startswith("HGMMA") for k in tc)


def test_registers_and_shared_memory_equal_the_tools(inspected):
    """Registers and static shared memory are cuobjdump's on the dumped cubin, spills and
    registers match the ptxas -v log of the same compile; the dynamic shared memory Triton
    requests holds at least the pipeline's (num_stages - 1) A and B tiles."""
    doc, dump = inspected
    for r in doc["kernels"]:
        d = _dump_dir(dump, r)
        tools = _cuobjdump(d / "kernel.cubin")
        assert r["registers"] == tools["REG"] > 0
        assert r["smem_static"] == tools["SHARED"]
        assert r["local_bytes"] == tools["LOCAL"]
        log = (d / "ptxas.log").read_text()
        assert int(re.search(r"Used (\d+) registers", log).group(1)) == r["registers"]
        st, ld = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups()
        assert (r["spill_stores"], r["spill_loads"]) == (int(st), int(ld))
        assert r["smem_bytes"] == r["smem_static"] + r["smem_dynamic"]
        assert r["smem_bytes"] <= insp.parse_arch(r["arch"]).smem_per_block_optin
        c = r["config"]
        if "BLOCK_K" in c:  # the GEMM kernels: fp16 A and B tiles in flight
            tiles = (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * 2
            assert tiles * (c["num_stages"] - 1) <= r["smem_dynamic"]


def test_dump_writes_every_stage(inspected):
    doc, dump = inspected
    for r in doc["kernels"]:
        d = _dump_dir(dump, r)
        text = {ext: (d / f"kernel.{ext}").read_text() for ext in
                ("ttir", "ttgir", "llir", "ptx", "sass")}
        assert "tt.func" in text["ttir"] and ("tt.dot" in text["ttir"]) == bool(
            r["instructions"]["tensor_core"])
        assert "ttg." in text["ttgir"] and f'ttg.target = "cuda:{r["arch"][3:5]}"' in text["ttgir"]
        assert "define" in text["llir"] and r["kernel"] in text["llir"]
        assert f".target {r['arch']}" in text["ptx"]
        assert f"code for {r['arch']}" in text["sass"]
        assert (d / "kernel.cubin").read_bytes()[:4] == b"\x7fELF"


def test_cached_results_are_reused(inspected):
    """A second run compiles nothing: every kernel/config comes from the cache."""
    doc, _ = inspected
    report = insp.run([registry.discover()["matmul"]], [insp.parse_arch(a) for a in ARCHS],
                      [torch.float16], first=MAIN)
    assert report.compiled == 0 and report.cached == len(doc["kernels"])
    for new, old in zip(report.rows, doc["kernels"]):
        assert new["registers"] == old["registers"] and new["opcodes"] == old["opcodes"]


def test_table_output(inspected):
    r = run_cli("inspect", "matmul", "--arch", "sm_90a", "--first", "1")
    assert r.returncode == 0, r.stderr
    assert "regs" in r.stdout and "occ" in r.stdout and "HGMMA" in r.stdout
    assert "0 compiled now" in r.stdout


def test_static_facts_for_the_sweep(inspected):
    doc, _ = inspected
    row = _rows(doc, "sm_90a")[0]
    facts = insp.static_facts("matmul", "triton", row["config"], torch.float16, (9, 0))
    assert facts["error"] is None and facts["arch"] == "sm_90a"
    assert facts["registers"] == row["registers"] and facts["smem_bytes"] == row["smem_bytes"]
    assert facts["occupancy"] == row["occupancy"]["occupancy"]
    assert facts["tensor_core"] == row["instructions"]["tensor_core"]
    assert facts["kernels"][0]["target"] == "fwd" and len(facts["kernels"]) == 1
    # The split-K path's config (as matmul's Impl.config reports it) selects the decode
    # kernel: no GROUP_M, and the descriptive keys are ignored.
    decode = next(r for r in _rows(doc, "sm_90a") if r["target"] == "decode")
    split = {"path": "splitk", "split_k": 4, "k_split": 1024, **decode["config"]}
    facts = insp.static_facts("matmul", "triton", split, torch.float16, "sm_90a")
    assert facts["target"] == "decode" and facts["registers"] == decode["registers"]
    # No config: the architecture's default (the first of its list), as with autotune off.
    assert insp.static_facts("matmul", "triton", None, torch.float16, "sm_90a")["registers"] \
        == row["registers"]
    assert "not a Triton impl" in insp.static_facts("matmul", "torch", None, torch.float16,
                                                    "sm_90a")["error"]
    # GROUP_M is the tiled kernel's, ACTIVATION the split-K kernels': no kernel takes both.
    assert insp.static_facts("matmul", "triton", {"GROUP_M": 8, "ACTIVATION": "none"},
                             torch.float16, "sm_90a")["error"].startswith("no compile target")
    assert "unsupported architecture" in insp.static_facts("matmul", "triton", None,
                                                           torch.float16, "sm_70")["error"]


_GPU_PATH = """
import json, multiprocessing.process, torch, triton
triton.knobs.runtime.interpret = False  # kernels decorate as JITFunctions, as on a GPU
def start(self):
    raise AssertionError("started a compile worker")
multiprocessing.process.BaseProcess.start = start
from tritonlab.static import api as insp
cfg = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
print(json.dumps(insp.static_facts("matmul", "triton", cfg, torch.float16, (8, 0))))
"""


def test_in_process_compile_as_on_a_gpu(tmp_path):
    """Where kernels are JITFunctions (the cuda backend), one missing kernel compiles in the
    calling process, with the same results format."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITONLAB_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", _GPU_PATH], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout.strip().splitlines()[-1])
    assert facts["error"] is None and facts["registers"] > 0
    assert any(k.startswith("HMMA") for k in facts["tensor_core"])
    entry = next((tmp_path / "inspect").glob("*/*/kernel.cubin"))
    assert _cuobjdump(entry)["REG"] == facts["registers"]


# -------------------------------------------------------------------------------- bad input

def _invoke(*args):
    """The CLI through Click's runner, in this process (the subprocess start-up of torch and
    Triton costs seconds; the real entry point is exercised by the tests above)."""
    from tritonlab import cli

    return CliRunner().invoke(cli.cli, list(args))


@pytest.mark.parametrize("args,message", [
    (("inspect", "matmul", "--arch", "sm_70"), "supported: sm_80, sm_86, sm_89, sm_90a"),
    (("inspect", "nosuchop"), "valid ops:"),
    (("inspect", "matmul", "--config", "BLOCK_M"), "expected KEY=VALUE"),
    (("inspect", "matmul", "--config", "BLOCK_Q=64"), "match no kernel argument; valid keys:"),
    (("inspect", "matmul", "--dtype", "int8"), "Invalid value for '--dtype'"),
])
def test_bad_input_exits_2(args, message):
    r = _invoke(*args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and r.stdout == ""


def test_config_that_does_not_compile_is_reported_and_the_rest_goes_on(cache):
    good = "BLOCK_M=64,BLOCK_N=64,BLOCK_K=32,num_warps=4,num_stages=2"
    r = _invoke("inspect", "matmul", "--arch", "sm_80", "--config", "BLOCK_M=48",
                "--config", good, "--json")
    assert r.exit_code == 1, r.output
    bad_row, good_row = [k for k in json.loads(r.stdout)["kernels"] if k["target"] == "fwd"]
    assert bad_row["status"] == "error" and bad_row["config"]["BLOCK_M"] == 48
    assert "power of 2" in bad_row["error"] and "power of 2" in r.stderr
    # Keys left out of --config (GROUP_M) come from the architecture's first config.
    assert good_row["status"] == "ok" and good_row["registers"] > 0
    assert good_row["config"] == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8,
                                  "num_warps": 4, "num_stages": 2}


def _baseline_only_op() -> OpSpec:
    class TorchOnly(MatmulOp):
        name, description = "torch_only", "a baseline without a kernel"

        def implementations(self):
            return [i for i in super().implementations() if i.kind == "baseline"]

    return TorchOnly()


def test_op_without_triton_implementation(monkeypatch):
    op = _baseline_only_op()
    assert "no Triton implementation" in insp.inspectable(op)
    monkeypatch.setattr(registry, "_ops", {**registry.discover(), op.name: op})
    r = _invoke("inspect", "torch_only")
    assert r.exit_code == 2
    assert "op 'torch_only' has no Triton implementation; ops to inspect: " in r.stderr
    assert "matmul" in r.stderr


# --------------------- the static GEMM test: tensor-core instructions, no spills, a block that launches

def _inspectable_ops():
    # attention_full compiles attention's kernels with CAUSAL=False, which only drops the
    # masked loops: the causal variant's code holds all of it, so it is checked alone.
    return [name for name, op in registry.discover().items()
            if op.compile_targets(torch.float16) and op.tags.get("mask") != "none"]


def _dot_rows(ttgir: str) -> list[int]:
    """M (rows) of every tt.dot result tile in a TTGIR listing."""
    return [int(m) for m in re.findall(r"tt\.dot[^\n]*-> tensor<(\d+)x\d+x", ttgir)]


def _test_dtype(op) -> torch.dtype:
    return torch.float16 if torch.float16 in op.dtypes else op.dtypes[0]


@pytest.fixture(scope="module")
def gemm_rows(cache) -> dict[str, list[dict]]:
    """Every inspectable op's main configs on sm_80 and sm_90a, compiled in one batch (the
    workers stay busy across ops), as rows by op; fp16 where the op has it (the tensor-core
    path is the same for bf16)."""
    ops = [registry.discover()[n] for n in _inspectable_ops()]
    rows: dict[str, list[dict]] = {op.name: [] for op in ops}
    for dtype in {_test_dtype(op) for op in ops}:
        batch = [op for op in ops if _test_dtype(op) == dtype]
        report = insp.run(batch, [insp.parse_arch(a) for a in ARCHS], [dtype],
                          first=STATIC_CONFIGS)
        for r in report.rows:
            rows[r["op"]].append(r)
    return rows


@pytest.mark.parametrize("name", _inspectable_ops())
def test_gemm_kernels_static(name, gemm_rows):
    """Each kernel with a tl.dot compiles in its main configs (STATIC_CONFIGS) for sm_80 to
    HMMA and for sm_90a to HGMMA (wgmma; QGMMA for fp8), with no spills. Where Triton cannot use wgmma (a
    dot tile whose rows are not a multiple of 64, as in decode kernels), the config is named
    with that reason (a warning) and must still use the tensor cores through HMMA."""
    rows = gemm_rows[name]
    assert rows, f"{name} declares compile_targets but none was compiled"
    problems, named = [], []
    for r in rows:
        where = f"{name}/{r['target']} {r['arch']} {insp.format_config(r['config'])}"
        if r["status"] != "ok":
            problems.append(f"{where}: does not compile: {r['error'][-300:]}")
            continue
        if r["spill_stores"] or r["spill_loads"]:
            problems.append(f"{where}: spills {r['spill_stores']} B stored, "
                            f"{r['spill_loads']} B loaded")
        if not r["occupancy"]["fits"]:
            problems.append(f"{where}: cannot launch: {r['occupancy']['reason']}")
        entry = Path(r["entry"])
        if "tt.dot" not in (entry / "kernel.ttir").read_text():
            continue  # not a GEMM kernel (e.g. a reduction epilogue)
        tc = r["instructions"]["tensor_core"]
        hmma = any(k.startswith("HMMA") for k in tc)
        hgmma = any(k.startswith(("HGMMA", "QGMMA")) for k in tc)  # QGMMA: fp8 wgmma
        if r["arch"] == "sm_80" and not hmma:
            problems.append(f"{where}: no HMMA (tensor core) instruction")
        if r["arch"] == "sm_90a" and not hgmma:
            tile_rows = _dot_rows((entry / "kernel.ttgir").read_text())
            if hmma and any(m % 64 for m in tile_rows):
                named.append(f"{where}: HMMA instead of HGMMA: its dot tiles have "
                             f"{sorted(set(tile_rows))} rows, and wgmma needs a multiple of 64")
            else:
                problems.append(f"{where}: no HGMMA (wgmma) instruction (tensor core: {tc})")
    for note in named:
        warnings.warn(note, stacklevel=1)
    assert not problems, "\n".join(problems)


def test_default_configs_fit_the_99_kb_gpus(cache):
    """On the GPUs with 99 KB of shared memory per block (sm_89: L4, L40S; sm_120: RTX 50xx)
    every inspectable kernel's default config in fp16 compiles and can launch. Consumer
    Blackwell is newer than Hopper but must get the Ampere/Ada lists (a list chosen by
    capability >= 9 gives it 129 KB persistent tiles). Spills are not asserted here: ptxas for
    these targets spills a few bytes in some configs that are spill-free on sm_80/sm_90a.
    fp32 defaults may not fit (attention's forward needs 224.5 KB); with autotuning off the launcher then
    takes the next config of the list that does (tests/test_tuning.py)."""
    ops = [registry.discover()[n] for n in _inspectable_ops()
           if torch.float16 in registry.discover()[n].dtypes]
    report = insp.run(ops, [insp.parse_arch("sm_89"), insp.parse_arch("sm_120")],
                      [torch.float16], first=1)
    problems = [f"{r['op']}/{r['target']} {r['arch']} {insp.format_config(r['config'])}: "
                + (r["error"] or "")[-200:] if r["status"] != "ok" else
                f"{r['op']}/{r['target']} {r['arch']}: {r['occupancy']['reason']}"
                for r in report.rows
                if r["status"] != "ok" or not r["occupancy"]["fits"]]
    assert {r["arch"] for r in report.rows} == {"sm_89", "sm_120a"}
    assert not problems, "\n".join(problems)


def test_fp32_attention_has_a_tile_that_fits_the_99_kb_gpus(cache):
    """fp32 attention tiles need about twice the shared memory of 16-bit ones: at head dim
    128 no larger entry of the forward, dK/dV or dQ lists fits sm_89 or sm_120, so each fp32
    list ends with a floor that does (the launcher falls back to it)."""
    # By name: the package's attribute `attention` is the function, not the module.
    attn = importlib.import_module("tritonlab.kernels.attention")

    for name in ("fwd", "bwd_dkdv", "bwd_dq"):
        for cap in ((8, 9), (12, 0), (9, 0)):
            listed = attn.KERNELS[128][name].configs(cap, torch.float32)
            assert config_dict(listed[-1]) == config_dict(attn._FP32_FLOOR), (name, cap)
    report = insp.run([registry.discover()["attention"]],
                      [insp.parse_arch("sm_89"), insp.parse_arch("sm_120")], [torch.float32],
                      configs=[config_dict(attn._FP32_FLOOR)])
    rows = {(r["target"], r["arch"]): r for r in report.rows}
    assert {t for t, _ in rows} >= {"fwd", "bwd_dkdv", "bwd_dq"}
    for (target, arch), r in rows.items():
        assert r["status"] == "ok", (target, arch, r["error"])
        assert r["occupancy"]["fits"], (target, arch, r["occupancy"]["reason"])
