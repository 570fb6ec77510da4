import Foundation
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif

/// The two commands that draw with `ServePlot`: `serve-plot` (the benchmarks' plots, from JSON)
/// and `serve simulate --plot`. No cluster: each runs one process and reads what it wrote.
@Suite("Plots: serve-plot and serve simulate --plot")
struct PlotCommandTests {
    @Test("serve-plot refuses a malformed chart, naming the field, and writes nothing")
    func malformed() async throws {
        try await Self.withDirectory { directory in
            let spec = directory.appendingPathComponent("chart.json")
            let output = directory.appendingPathComponent("chart.svg")
            try #"{"panels": [{"series": [{"name": "a", "kind": "area", "points": [[0, 1]]}]}]}"#
                .write(to: spec, atomically: true, encoding: .utf8)
            let plot = try Child("serve-plot", [spec.path, "--output", output.path])
            #expect(try await plot.waitForExit() == 1)
            #expect(
                plot.output.contains(#"panels[0].series[0].kind: must be one of "line", "step", "bar", not "area""#),
                "\(plot.output)")
            #expect(!FileManager.default.fileExists(atPath: output.path))
        }
    }

    @Test("serve-plot draws a chart described in JSON")
    func draws() async throws {
        try await Self.withDirectory { directory in
            let spec = directory.appendingPathComponent("chart.json")
            let output = directory.appendingPathComponent("chart.svg")
            try """
            {"title": "throughput <&>", "panels": [{"categories": ["8 conn."], "y": {"label": "requests/s", "log": true},
              "series": [{"name": "swift-serve", "kind": "bar", "values": [52000]}]}]}
            """.write(to: spec, atomically: true, encoding: .utf8)
            let plot = try Child("serve-plot", [spec.path, "-o", output.path])
            #expect(try await plot.waitForExit() == 0, "\(plot.output)")
            let svg = try String(contentsOf: output, encoding: .utf8)
            #expect(XMLParser(data: Data(svg.utf8)).parse())
            #expect(svg.contains("throughput &lt;&amp;&gt;") && svg.contains("swift-serve, 8 conn.: 52000 requests/s"))
        }
    }

    @Test("serve simulate --plot draws the requests over the replicas, with the five series")
    func simulate() async throws {
        try await Self.withDirectory { directory in
            let output = directory.appendingPathComponent("simulate.svg")
            let simulation = try Child(
                "serve",
                [
                    "simulate", "--config", "examples/autoscale.yaml", "--load", "examples/step-trace.csv", "--plot",
                    output.path,
                ])
            #expect(try await simulation.waitForExit() == 0, "\(simulation.output)")
            let svg = try String(contentsOf: output, encoding: .utf8)
            #expect(XMLParser(data: Data(svg.utf8)).parse())
            for id in ["requests", "replicas", "load", "ongoing", "queued", "target", "running"] {
                #expect(svg.contains(#"id="\#(id)""#), "\(id)")
            }
            for text in [">time (s)<", ">replicas<", ">load (clients)<", ">serve simulate: busy/B, step-trace.csv<"] {
                #expect(svg.contains(text), "\(text)")
            }
            // The target is a step line: two points per row after the first, and it moves.
            let target = try #require(svg.split(separator: "\n").first { $0.contains(#"id="target""#) })
            let points = try #require(target.firstMatch(of: /points="([^"]*)"/)).1.split(separator: " ")
            #expect(points.count % 2 == 1 && points.count > 100)
            #expect(Set(points.map { $0.split(separator: ",")[1] }).count > 1)
        }
    }

    private static func withDirectory(_ body: (URL) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("plot-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await body(directory)
    }
}
