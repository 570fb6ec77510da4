import ServeCore
import ServePlot

/// `serve simulate --plot`: a run's timeline as a chart. Requests on top (load, ongoing,
/// queued), replicas below (running and target as step lines), on one time axis. Series are
/// `<polyline>`s with ids `load`, `ongoing`, `queued`, `target`, `running`, in panels `requests`
/// and `replicas`. Rows at tick resolution (`run(step: tick)`) draw the run exactly; coarser
/// rows are joined by lines.
enum SimulationChart {
    static func chart(_ rows: [SimulationRow], mode: LoadTrace.Mode, title: String) -> Chart {
        let end = max(rows.last?.time ?? 1, 1e-9)
        func points(_ value: (SimulationRow) -> Double) -> [Point] {
            rows.map { Point($0.time, value($0)) }
        }
        let replicaMax = rows.reduce(0.0) { max($0, Double($1.target), Double($1.running)) }
        let requests = Panel(
            id: "requests",
            x: Axis(minimum: 0, maximum: end, ticks: 10),
            y: Axis(label: "requests", integer: true),
            series: [
                Series(
                    id: "load", name: mode == .clients ? "load (clients)" : "load (requests/s)", kind: .step,
                    color: "#8fbfe0", width: 5, points: points(\.load)),
                Series(
                    id: "ongoing", name: "ongoing (replicas)", color: "#2ca02c", points: points { Double($0.ongoing) }),
                Series(id: "queued", name: "queued (router)", color: "#d62728", points: points { Double($0.queued) }),
            ]
        )
        let replicas = Panel(
            id: "replicas",
            height: 200,
            x: Axis(label: "time (s)", minimum: 0, maximum: end, ticks: 10),
            y: Axis(
                label: "replicas", minimum: 0, maximum: max(replicaMax + (replicaMax >= 1 ? 1 : 0), 1), integer: true),
            series: [
                // Running under the dashed target, wider, so both show where they agree.
                Series(
                    id: "running", name: "running", kind: .step, color: "#9f8fc9", width: 5,
                    points: points { Double($0.running) }),
                Series(
                    id: "target", name: "target", kind: .step, color: "#e6550d", dash: "7 5",
                    points: points { Double($0.target) }),
            ]
        )
        return Chart(title: title, panels: [requests, replicas])
    }
}
