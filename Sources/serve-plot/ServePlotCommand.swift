import ArgumentParser
import Foundation
import ServePlot

/// `serve-plot`: draws a chart described in JSON as SVG, with the renderer `serve simulate --plot`
/// uses. The benchmarks' Python scripts write the JSON and call it, so that their plots and the
/// simulator's look alike and no script draws SVG itself.
@main
struct ServePlotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve-plot",
        abstract: "Draw a chart described in JSON as SVG (the benchmarks' plots).",
        discussion: """
            The chart (only "panels" is required; benchmarks/README.md, "Plots", has more):

              {"title": "...", "width": 960, "columns": 1,
               "panels": [{"id": "...", "title": "...", "height": 230, "note": "...",
                 "x": {"label": "time (s)", "min": 0, "max": 60, "integer": false,
                       "log": false, "ticks": 5},
                 "y": {"label": "replicas", "integer": true},
                 "bands": [{"from": 0, "to": 10, "label": "load", "color": "#fdf2e0"}],
                 "series": [{"name": "running", "id": "running", "kind": "step",
                             "color": "#3182bd", "dash": "6 4", "width": 2,
                             "points": [[0, 1], [2.5, 2]]}]}]}

            Series kinds: "line" and "step" (a value holds until the next point) take \
            "points"; "bar" takes "values" (one per category, null: n/a) and "whiskers" \
            (a second value marked on each bar), in a panel with "categories" (["8 conn.", \
            "32 conn."]) instead of a numeric x. "columns" \
            puts that many panels side by side; one stacks them. A field that is wrong \
            is refused with its path, e.g. panels[0].series[1].kind.
            """
    )

    @Argument(help: "The chart's JSON description; - reads standard input.") var spec: String = "-"
    @Option(name: [.short, .long], help: "Write the SVG to this file (default: standard output).") var output: String?

    func run() throws {
        do {
            let svg = try Self.chart(from: self.spec).svg()
            if let output = self.output {
                do {
                    try svg.write(toFile: output, atomically: true, encoding: .utf8)
                } catch {
                    throw PlotFailure(message: "cannot write \(output): \(error.localizedDescription)")
                }
            } else {
                FileHandle.standardOutput.write(Data(svg.utf8))
            }
        } catch let failure as PlotFailure {
            FileHandle.standardError.write(Data("serve-plot: \(failure.message)\n".utf8))
            throw ExitCode(1)
        }
    }

    private static func chart(from spec: String) throws -> Chart {
        let data: Data
        if spec == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let read = FileManager.default.contents(atPath: spec) else {
                throw PlotFailure(message: "cannot read \(spec)")
            }
            data = read
        }
        do {
            return try Chart(json: data)
        } catch {
            throw PlotFailure(message: "\(spec == "-" ? "standard input" : spec): \(error)")
        }
    }
}

private struct PlotFailure: Error {
    var message: String
}
