"""Human-readable rendering of result objects with rich (the API never prints)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ortforge.measure.bench import BenchReport, VariantResult
from ortforge.measure.stats import Ratio

MIB = 1024 * 1024


def print_note(console: Console, note: str) -> None:
    """A note, printed as written: notes quote shapes and intervals in brackets that rich would take for markup."""
    console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f} MiB"


def _ms(value: float) -> str:
    if value < 1:
        return f"{value:.3g}"
    return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"


def render_doctor(report, console: Console) -> None:  # noqa: ANN001 - commands.doctor.DoctorReport
    cpu = report.machine.cpu
    console.print(f"[bold]onnxruntime {report.ort_version}[/] ({report.flavour}), device {report.device}, Python {report.python}")
    console.print(f"  {report.build_info}")
    console.print(f"  loads models up to IR {report.max_ir_version}, opsets " + ", ".join(f"{d} {v}" for d, v in report.max_opsets.items()))
    console.print(f"[bold]CPU[/] {cpu.model} ({cpu.architecture}), {cpu.physical_cores} physical / {cpu.logical_cores} logical cores")
    console.print("  features: " + (", ".join(cpu.features) or "none detected"))
    if report.machine.gpus:
        for gpu in report.machine.gpus:
            console.print(f"[bold]GPU[/] {gpu.name}, {gpu.memory_mib} MiB, driver {gpu.driver}, compute capability {gpu.compute_capability}")
    else:
        console.print(f"[bold]GPU[/] none found ({report.machine.gpu_probe})")
    table = Table(title="Available execution providers and devices")
    for column in ("EP", "device", "vendor", "metadata"):
        table.add_column(column)
    seen = set()
    for device in report.ep_devices:
        seen.add(device.ep)
        table.add_row(device.ep, device.device_type, device.device_vendor, ", ".join(f"{k}={v}" for k, v in device.metadata.items()))
    for provider in report.available_providers:
        if provider not in seen:
            table.add_row(provider, "-", "-", "")
    console.print(table)
    console.print("[bold]Missing execution providers[/] (pip flavour, or build from source):")
    for ep in report.missing:
        console.print(f"  [bold]{ep.name}[/] needs {ep.needs}")
        console.print(f"    pip: {ep.pip or 'no pip package'}", highlight=False)
        console.print(f"    build: {ep.build}", highlight=False)
    for note in report.notes:
        print_note(console, note)


def _ratio_text(ratio: Ratio | None) -> str:
    return ratio.text() if ratio is not None else "-"


def _ratio(result: VariantResult) -> str:
    return _ratio_text(result.ratio)


def render_bench(report: BenchReport, console: Console, top: int = 8) -> None:
    table = Table(title=f"Benchmark ({report.rounds} interleaved rounds, {report.wall_s:.1f} s)")
    table.add_column("")
    for result in report.variants:
        table.add_column(result.label, justify="right", overflow="fold")
    rows = [
        ("session create (ms)", lambda r: _ms(r.create_s * 1e3)),
        ("first run (ms)", lambda r: _ms(r.first_run_s * 1e3)),
        ("start-up p50 (ms), repeated", lambda r: f"{_ms(r.startup.p50)} ({r.startup.count}x)" if r.startup else "-"),
        ("start-up ratio to first", lambda r: _ratio_text(r.startup_ratio)),
        ("p50 (ms)", lambda r: _ms(r.latency.p50)),
        ("p90 (ms)", lambda r: _ms(r.latency.p90)),
        ("p99 (ms)", lambda r: _ms(r.latency.p99)),
        ("mean (ms)", lambda r: _ms(r.latency.mean)),
        ("min / max (ms)", lambda r: f"{_ms(r.latency.min)} / {_ms(r.latency.max)}"),
        ("round p50 spread (ms)", lambda r: "{} - {}".format(*map(_ms, r.latency.spread))),
        ("runs timed", lambda r: f"{r.latency.count:,}"),
        ("throughput (items/s)", lambda r: f"{r.throughput:,.1f} @ batch {r.batch}"),
        ("peak RSS", lambda r: _mib(r.peak_rss)),
        ("session memory", lambda r: _mib(r.session_rss)),
        ("EPs", lambda r: ", ".join(p.replace("ExecutionProvider", "") for p in r.providers)),
        ("nodes per EP", _placement_cell),
    ]
    if any(r.generation for r in report.variants):  # latency rows are per generated token
        rows = [(name.replace("(ms)", "(ms/token)") if name.startswith(("p", "mean", "min", "round")) else name, cell) for name, cell in rows]
        rows = [row for row in rows if not row[0].startswith("throughput")]
        rows.insert(rows.index(next(r for r in rows if r[0] == "p50 (ms/token)")), ("prefill p50 (ms)", lambda r: _ms(r.prefill.p50) if r.prefill else "-"))
        rows.insert(rows.index(next(r for r in rows if r[0] == "runs timed")), ("decode tokens/s", lambda r: f"{r.throughput:,.1f}"))
        rows = [("generations timed", lambda r: f"{r.latency.count:,}") if name == "runs timed" else (name, cell) for name, cell in rows]
    if not any(r.startup for r in report.variants):
        rows = [row for row in rows if not row[0].startswith("start-up")]
    elif len(report.variants) == 1:
        rows = [row for row in rows if row[0] != "start-up ratio to first"]
    if len(report.variants) > 1:
        rows.insert(rows.index(next(r for r in rows if r[0] in ("p50 (ms)", "p50 (ms/token)"))), ("p50 ratio to first", _ratio))
    for name, cell in rows:
        table.add_row(name, *(cell(result) for result in report.variants))
    console.print(table)
    _render_op_times(report, console, top)
    console.print(f"inputs: {report.feeds['origin']}, {report.feeds['samples']} sample(s), shapes {report.feeds['shapes']}")
    _render_notes(report.feeds.get("notes", []), console)
    for note in report.notes:
        print_note(console, note)


def _render_notes(notes: list[str], console: Console, limit: int = 4) -> None:
    for note in notes[:limit]:
        console.print(f"  {escape(note)}", style="dim", highlight=False)
    if len(notes) > limit:
        console.print(f"  ... {len(notes) - limit} more (see --json)", style="dim")


def _placement_cell(result: VariantResult) -> str:
    if result.placement is None or result.placement.error:
        return "n/a"
    return ", ".join(f"{p.replace('ExecutionProvider', '')} {n}" for p, n in result.placement.counts.items())


def _render_op_times(report: BenchReport, console: Console, top: int) -> None:
    profiled = [r for r in report.variants if r.profile]
    if not profiled:
        return
    op_types: list[str] = []
    for result in profiled:
        for item in result.profile.by_op_type[:top]:  # type: ignore[union-attr]
            if item.op_type not in op_types:
                op_types.append(item.op_type)
    table = Table(title="Time per run by op type (ORT profiler, kernel time)")
    table.add_column("op type")
    for result in profiled:
        table.add_column(result.label, justify="right", overflow="fold")
    for op_type in op_types:
        cells = []
        for result in profiled:
            match = next((i for i in result.profile.by_op_type if i.op_type == op_type), None)  # type: ignore[union-attr]
            cells.append(f"{match.total_us / 1e3:,.3f} ms {match.share:4.0%} ({match.nodes})" if match else "-")
        table.add_row(op_type, *cells)
    table.add_row("[bold]all kernels[/]", *(f"{r.profile.per_run_us / 1e3:,.3f} ms" for r in profiled))  # type: ignore[union-attr]
    console.print(table)
    for result in profiled:
        nodes = Table(title=f"Slowest nodes: {result.label}")
        for column in ("node", "op", "EP", "ms/run"):
            nodes.add_column(column, overflow="fold")
        for node in result.profile.top_nodes[: max(3, top // 2)]:  # type: ignore[union-attr]
            nodes.add_row(node.name, node.op_type, node.provider.replace("ExecutionProvider", ""), f"{node.mean_us / 1e3:,.3f}")
        console.print(nodes)


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:,.2f} {unit}"
    return f"{value:,.0f}"


def _shape_text(shape) -> str:  # noqa: ANN001 - tuple of dims or None
    if shape is None:
        return "?"
    return escape("[" + ", ".join("?" if d is None else str(d) for d in shape) + "]")


def render_inspect(report, console: Console, top: int = 8) -> None:  # noqa: ANN001 - inspection.ModelReport
    opsets = ", ".join(f"{domain} {version}" for domain, version in report.opsets.items())
    console.print(f"[bold]{escape(report.name)}[/]  IR {report.ir_version}, opsets {opsets}, producer {report.producer or '?'}", highlight=False)
    io = Table(title="Inputs and outputs")
    for column in ("", "name", "dtype", "shape", "used for FLOPs"):
        io.add_column(column, overflow="fold")
    for value in report.inputs:
        io.add_row("in", value.name, value.dtype, _shape_text(value.shape), _shape_text(report.shapes.get(value.name)))
    for value in report.outputs:
        io.add_row("out", value.name, value.dtype, _shape_text(value.shape), "")
    console.print(io)
    _render_notes(report.shape_defaults, console)
    console.print(f"[bold]family:[/] {report.family}", highlight=False)
    for evidence in report.family_evidence:
        console.print(f"  - {escape(evidence)}", highlight=False)
    params = report.parameters
    by_dtype = ", ".join(f"{dtype} {_count(info['count'])} ({_mib(info['bytes'])})" for dtype, info in params.by_dtype.items())
    console.print(f"[bold]parameters:[/] {_count(params.count)} in {params.tensors} tensors, {_mib(params.bytes)}" + (f": {by_dtype}" if by_dtype else ""))
    macs = report.macs
    console.print(f"[bold]compute:[/] {_count(macs.total_macs)}MACs = {_count(macs.flops)}FLOPs per run ({macs.counted_nodes} heavy nodes counted)")
    if macs.by_op_type:
        console.print("  by op: " + ", ".join(f"{op} {_count(value)}MACs" for op, value in sorted(macs.by_op_type.items(), key=lambda kv: -kv[1])))
    by_reason = defaultdict(list)
    for unknown in macs.unknown:
        by_reason[unknown.reason.split(": ", 1)[-1] if "fallback failed" in unknown.reason else unknown.reason].append(unknown)
    for reason, nodes in by_reason.items():
        first = ", ".join(f"{n.name} ({n.op_type})" for n in nodes[:3]) + (", ..." if len(nodes) > 3 else "")
        console.print(f"  [yellow]{len(nodes)} heavy node(s) not counted[/] ({escape(first)}): {escape(reason)}", highlight=False)
    ops = Table(title=f"Ops ({report.node_count} nodes, {report.subgraph_node_count} of them in {report.subgraph_count} subgraphs)")
    ops.add_column("op type")
    ops.add_column("count", justify="right")
    for op_type, count in sorted(report.op_histogram.items(), key=lambda kv: -kv[1]):
        ops.add_row(op_type, str(count))
    console.print(ops)
    _render_placements(report.placements, console, top)
    for note in report.notes + macs.notes:
        print_note(console, note)


def _render_placements(placements: list, console: Console, top: int) -> None:
    if not placements:
        return
    table = Table(title="Node placement per execution provider (after ORT graph optimizations)")
    for column in ("EP asked first", "nodes per EP", "left to the CPU"):
        table.add_column(column, overflow="fold")
    for placement in placements:
        asked = placement.requested[0]
        if placement.error:
            table.add_row(asked, f"[red]{placement.error}[/]", "")
            continue
        counts = ", ".join(f"{p.replace('ExecutionProvider', '')} {n}" for p, n in placement.counts.items())
        fallback = placement.cpu_fallback
        left = "-" if asked == "CPUExecutionProvider" else (
            f"{len(fallback)}: " + ", ".join(f"{n.name} ({n.op_type})" for n in fallback[:top]) + (" ..." if len(fallback) > top else "")
            if fallback else "none"
        )
        table.add_row(asked, counts, left)
    console.print(table)


def render_optimize(report, console: Console) -> None:  # noqa: ANN001 - optimize.OptimizeReport
    stamp = report.stamp
    if report.fusion is not None:
        details = report.fusion.result.details
        fused = ", ".join(f"{op} {count}" for op, count in details.get("fused_ops", {}).items()) or "nothing"
        info = details.get("detected", {})
        console.print(
            f"[bold]transformer fusion[/] ({details.get('fuser', '?')}, {details.get('model_type', '?')}, "
            f"{details.get('num_heads', '?')} heads / hidden {details.get('hidden_size', '?')}"
            f"{' found in the graph' if info else ''}): {details.get('nodes_before', '?')} -> {details.get('nodes_after', '?')} nodes; {fused}",
            highlight=False,
        )
        console.print(f"  {escape(report.fusion.why)}", highlight=False)
    console.print(f"[bold]wrote[/] {escape(report.output)}", highlight=False)
    for change in report.transform.changes[:12]:
        console.print(f"  {escape(change)}", highlight=False)
    scope = "portable (no layout/ISA rewrites)" if stamp.portable else f"{stamp.architecture} with {', '.join(stamp.isa_features) or 'no listed ISA features'}"
    console.print(
        f"[bold]stamp:[/] level {stamp.level}, onnxruntime {stamp.ort_version}, "
        f"{', '.join(p['name'].replace('ExecutionProvider', '') for p in stamp.providers)}, {scope}",
        highlight=False,
    )
    style = "green" if report.verification.passed else "red"
    console.print(f"[bold]check:[/] [{style}]{report.verification.summary()}[/]", highlight=False)
    if report.measurement:
        render_bench(report.measurement, console, top=0)
        if report.startup_ratio:
            console.print(f"[bold]offline vs online:[/] start-up {_ratio_text(report.startup_ratio)}, latency {_ratio_text(report.latency_ratio)}")
    for note in report.notes:
        print_note(console, note)


def run_to_dict(loaded, feeds, outputs) -> dict:  # noqa: ANN001
    return {
        "model": str(loaded.path),
        "config": loaded.config.to_dict(),
        "stamped": loaded.stamp is not None,
        "reoptimized": loaded.reoptimized,
        "notes": loaded.notes,
        "inputs": feeds.to_dict(),
        "outputs": [{name: _array_dict(value) for name, value in sample.items()} for sample in outputs],
    }


def _array_dict(value) -> dict:  # noqa: ANN001 - numpy array
    import numpy as np

    if value is None:
        return {"absent": True}
    if isinstance(value, list):  # a sequence output
        return {"sequence": [_array_dict(item) for item in value]}
    array = np.asarray(value)
    data = {"dtype": str(array.dtype), "shape": list(array.shape)}
    if array.size <= 10_000:
        data["values"] = array.tolist()
    if array.size and array.dtype.kind in "fiub":
        data.update(min=float(array.min()), max=float(array.max()), mean=float(array.mean()))
    return data


def render_run(loaded, feeds, outputs, console: Console) -> None:  # noqa: ANN001
    import numpy as np

    how = "re-optimized for this machine" if loaded.reoptimized else ("stamp checked" if loaded.stamp else "no ortforge stamp")
    console.print(f"[bold]{escape(loaded.path.name)}[/] ({how}; level {loaded.config.graph_optimization_level}, {', '.join(loaded.config.provider_names)})", highlight=False)
    for note in loaded.notes:
        console.print(f"  {escape(note)}", style="dim", highlight=False)
    for index, sample in enumerate(outputs):
        console.print(f"[bold]sample {index}[/]")
        for name, value in sample.items():
            array = np.asarray(value)
            text = np.array2string(array, threshold=12, edgeitems=3, precision=5)
            console.print(f"  {escape(name)} {array.dtype} {list(array.shape)}: {escape(text)}", highlight=False)
    console.print(f"inputs: {escape(feeds.origin)}", style="dim", highlight=False)


def render_session_tuning(tuning, path, console: Console) -> None:  # noqa: ANN001 - commands.tune_session.SessionTuning
    render_bench(tuning.final, console, top=0)
    table = Table(title="Against ORT's defaults, per interleaved round")
    for column in ("candidate", "p50 (ms)", "ratio [95% interval]", "rounds won"):
        table.add_column(column, overflow="fold")
    for score in tuning.scores:
        table.add_row(score.label, _ms(score.p50_ms), score.text(), f"{score.wins:.0%}")
    console.print(table)
    console.print(f"[bold]chosen:[/] {escape(tuning.chosen.label)} ({escape(tuning.why)})", highlight=False)
    console.print(f"[bold]wrote[/] {escape(str(path))}", highlight=False)
    for note in tuning.notes:
        print_note(console, note)


def render_quantize(report, console: Console) -> None:  # noqa: ANN001 - commands.quantize.QuantizeReport
    table = Table(title="Recipes against fp32 (" + ", ".join(t.describe() for t in report.tolerances) + ")")
    for column in ("recipe", "size", "cosine", "top-1", "max abs", "latency vs fp32", "rounds won", "verdict"):
        table.add_column(column, overflow="fold")
    for trial in report.trials:
        measured = trial.metrics
        speed = trial.speed
        verdict = "[green]chosen[/]" if trial is report.chosen else ("ok" if trial.passed else f"[red]{escape(trial.why_not)}[/]")
        table.add_row(
            escape(trial.label),
            _mib(trial.size_bytes) if trial.size_bytes else "-",
            f"{measured['cosine']:.4f}" if "cosine" in measured else "-",
            f"{measured['top1']:.0%}" if "top1" in measured else "-",
            f"{measured['max_abs']:.3g}" if "max_abs" in measured else "-",
            speed.text() if speed else "-",
            f"{speed.wins:.0%}" if speed and trial.candidate.kind != "fp32" else "-",
            verdict,
        )
    console.print(table)
    console.print(f"[bold]chosen:[/] {escape(report.why)}", highlight=False)
    if report.exclusion is not None and report.exclusion.met:
        for candidate in report.exclusion.excluded:
            console.print(f"  kept float: {escape(candidate.node)} ({escape(candidate.reason)})", highlight=False)
    if report.exclusion is not None:
        for note in report.exclusion.notes:
            console.print(f"  exclusion search ({report.exclusion.attempts} attempts): {escape(note)}", highlight=False)
    console.print(f"[bold]wrote[/] {escape(report.output)}", highlight=False)
    for trial in report.trials:
        for note in trial.notes:
            console.print(f"  {escape(trial.label)}: {escape(note)}", style="dim", highlight=False)
    for note in report.notes:
        print_note(console, note)


def render_quant_debug(report, console: Console, top: int = 15) -> None:  # noqa: ANN001 - analysis.quant_errors.QuantDebugReport
    for title, rows in (("Activations, by SQNR lost at the node", report.activations), ("Weights, worst SQNR first", report.weights)):
        table = Table(title=title)
        table.add_column("node (tensor in --json)", overflow="fold", ratio=3)
        for column in ("op", "SQNR dB", "lost dB", "rel. err", "float |x|"):
            table.add_column(column, no_wrap=True, justify="right")
        for error in rows[:top]:
            lost = f"{error.drop_db:.1f}" if error.kind == "activation" else "-"
            table.add_row(escape(error.node), error.op_type, f"{error.sqnr_db:.1f}", lost, f"{error.rel_error:.3g}",
                          f"{error.float_absmax:.3g}")  # fmt: skip
        console.print(table)
    worst = ", ".join(f"{o.name}: cosine {o.cosine:.4f}, max abs {o.max_abs:.3g}" + (f", top-1 {o.top1:.0%}" if o.top1 is not None else "")
                      for o in report.end_to_end.outputs)  # fmt: skip
    console.print(f"[bold]end to end[/] ({report.samples} samples): {escape(worst)}", highlight=False)
    if report.unmatched:
        console.print(f"  {report.unmatched} float tensor(s) had no counterpart in the quantized model", style="dim")
    for note in report.notes:
        print_note(console, note)


def _figures_table(title: str, columns: list[str], rows: list[list]) -> Table:
    """The first column (a label) wraps at its words; figures never wrap, so no number is split across lines."""
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, overflow="fold", ratio=1) if index == 0 else table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    return table


def render_tune(report, console: Console) -> None:  # noqa: ANN001 - tune.TuneReport
    record = report.record
    console.print(_figures_table("Finalists, measured interleaved (latency ratio to fp32 + ORT defaults)",
                                 ["candidate", "p50", "ratio [95% interval]", "rounds won", record["error_label"]], record["finalist_rows"]))  # fmt: skip
    if record.get("ablation_rows"):
        console.print(_figures_table(f"Head to head: the choice and each of its components (noise {record['summary'].get('noise', '-')})",
                                     ["variant", "p50", "ratio [95% interval]", "vs fp32 + ORT defaults", record["error_label"], "front", ""],
                                     record["ablation_rows"]))  # fmt: skip
    if record["rejected"]:
        console.print("[bold]rejected:[/]")
        for label, why in record["rejected"]:
            console.print(f"  {escape(label)}: {escape(why)}", highlight=False)
    summary = record["summary"]
    console.print(f"[bold]chosen:[/] {escape(record['why'])}", highlight=False)
    ratio = {"throughput": "time per request", "startup": "start-up time", "decode": "time per generated token",
             "prefill": "prefill latency"}.get(record.get("objective", ""), "latency")
    console.print(f"  {ratio} {summary['speedup']}, {summary['accuracy']}, size {summary['size']}, start-up {summary['startup']}"
                  + (f", throughput {summary['throughput']}" if "throughput" in summary else ""), highlight=False)  # fmt: skip
    console.print(f"  {escape(summary.get('evidence', ''))}", highlight=False)
    if "roofline" in summary:
        console.print(f"  roofline: {escape(summary['roofline'])}", highlight=False)
    cached = sum(1 for c in record["candidates"] if c.get("cached"))
    console.print(f"  {record['built']} candidate(s) built" + (f", {cached} taken from the cache" if cached else "") + f"; {record['elapsed_s']:.0f} s",
                  style="dim")  # fmt: skip
    written = ", ".join(sorted(path.name for path in Path(report.artifact).iterdir())) if Path(report.artifact).is_dir() else ""
    console.print(f"[bold]wrote[/] {escape(str(report.artifact))}/ ({written})", highlight=False)
    for note in record["notes"]:
        print_note(console, note)


def render_fp16(report, console: Console) -> None:  # noqa: ANN001 - commands.fp16.Fp16Report
    plan = report.plan
    console.print(f"[bold]wrote[/] {escape(report.output)} (fp16 kernels of {report.provider})", highlight=False)
    share = "" if report.fp16_mac_share is None else f", {report.fp16_mac_share:.0%} of the MACs in fp16"
    console.print(f"  fp16 nodes {plan.get('fp16_nodes', '?')}, fp32 nodes {plan.get('fp32_nodes', '?')}, casts {plan.get('casts_inserted', '?')}{share}", highlight=False)
    for reason, count in (plan.get("fp32_reasons") or {}).items():
        console.print(f"    fp32 because {reason}: {count}", highlight=False)
    judged = "simulated fp16" if report.judged_by == "simulation" else f"fp16 on {report.judged_by}"
    console.print(f"  {judged}: {escape(report.verdict.summary())}", highlight=False)
    if report.search:
        search = report.search
        console.print(f"  --auto: {len(search.kept_fp32)} more node(s) kept fp32 after {search.evaluations} evaluations in {search.wall_s:.1f} s")
        tried = "; ".join(f"{n} fp16 nodes predicted at {p:.2f}x the tolerance, {'within' if m else 'OUTSIDE'}" for n, p, m in search.choices)
        if tried:
            console.print(f"  choices judged: {tried}", highlight=False)
        for node, why in search.kept_fp32[:10]:
            console.print(f"    {escape(node)}: {escape(why)}", highlight=False)
        if len(search.kept_fp32) > 10:
            console.print(f"    ... {len(search.kept_fp32) - 10} more (--json lists them all)")
    for note in report.notes + (report.search.notes if report.search else []):
        print_note(console, note)


def render_tensorrt(result, console: Console) -> None:  # noqa: ANN001 - transforms.tensorrt.TensorRTInt8
    console.print(f"wrote {escape(result.folder)}: model.onnx, calibration.flatbuffers ({result.tensors} tensors, {result.samples} samples), "
                  "session.json", highlight=False)  # fmt: skip
    for note in result.notes:
        print_note(console, note)


def render_zoo(entries: list[dict], console: Console) -> None:
    for entry in entries:
        console.print(f"zoo:{entry['name']:<12} {entry['family']:<4} {entry['package']}=={entry['version']} ({entry['license']}) "
                      f"{escape(entry['description'])}", highlight=False)  # fmt: skip


def render_cache(report, console: Console) -> None:  # noqa: ANN001 - commands.cache.CacheReport
    if report.cleared:
        console.print(f"cleared {', '.join(report.cleared)}: {report.freed_bytes / 2**20:.1f} MiB freed", highlight=False)
    table = Table(title=f"Cache: {escape(report.root)} (set $ORTFORGE_CACHE to move it)")
    for column, justify in (("part", "left"), ("holds", "left"), ("files", "right"), ("size", "right")):
        table.add_column(column, justify=justify, no_wrap=column != "holds")
    for part in report.parts:
        table.add_row(part.name, part.what, str(part.files), f"{part.bytes / 2**20:.1f} MiB")
    console.print(table)


def render_fleet(report, console: Console) -> None:  # noqa: ANN001 - tuning.fleet.FleetReport
    rows = [[p.model, p.target.name, p.winner or "-", p.speedup or "-", p.accuracy or p.error, f"{p.seconds:.0f} s" + (" (earlier run)" if p.kept else "")]
            for p in report.pairs]  # fmt: skip
    console.print(_figures_table(f"tune-many: {len(report.pairs)} (model, target) pairs, runner {report.runner}, {report.wall_s:.0f} s",
                                 ["model", "target", "winner", "latency vs fp32", "accuracy (or why not)", "time"], rows))  # fmt: skip
    console.print(f"[bold]wrote[/] {escape(str(report.output))}/ (one folder per model and target, index.html, index.json)", highlight=False)
