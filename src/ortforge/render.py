"""Human-readable rendering of result objects with rich (the API never prints)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .bench import BenchReport, VariantResult
from .doctor import DoctorReport

MIB = 1024 * 1024


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f} MiB"


def _ms(value: float) -> str:
    return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"


def render_doctor(report: DoctorReport, console: Console) -> None:
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
        console.print(f"[yellow]note:[/] {note}")


def _ratio(result: VariantResult) -> str:
    median, low, high = result.ratio
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"


def render_bench(report: BenchReport, console: Console, top: int = 8) -> None:
    table = Table(title=f"Benchmark ({report.rounds} interleaved rounds, {report.wall_s:.1f} s)")
    table.add_column("")
    for result in report.variants:
        table.add_column(result.label, justify="right", overflow="fold")
    rows = [
        ("session create (ms)", lambda r: _ms(r.create_s * 1e3)),
        ("first run (ms)", lambda r: _ms(r.first_run_s * 1e3)),
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
    if len(report.variants) > 1:
        rows.insert(2, ("p50 ratio to first", _ratio))
    for name, cell in rows:
        table.add_row(name, *(cell(result) for result in report.variants))
    console.print(table)
    _render_op_times(report, console, top)
    console.print(f"inputs: {report.feeds['origin']}, {report.feeds['samples']} sample(s), shapes {report.feeds['shapes']}")
    _render_notes(report.feeds.get("notes", []), console)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")


def _render_notes(notes: list[str], console: Console, limit: int = 4) -> None:
    for note in notes[:limit]:
        console.print(f"  {note}", style="dim", highlight=False)
    if len(notes) > limit:
        console.print(f"  ... {len(notes) - limit} more (see --json)", style="dim")


def _placement_cell(result: VariantResult) -> str:
    if result.placement is None:
        return "n/a"
    if result.placement.error:
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
