import Foundation
import Testing

@testable import ServePlot

@Suite("Chart descriptions (serve-plot's JSON)")
struct ChartJSONTests {
    @Test("a full description reads as the chart it describes")
    func full() throws {
        let json = """
            {"title": "t", "width": 800, "columns": 2, "panels": [
              {"id": "p", "title": "swift-serve", "height": 200, "note": "n",
               "x": {"label": "seconds", "min": 0, "max": 12},
               "y": {"label": "replicas", "max": 5, "integer": true, "ticks": 6},
               "bands": [{"from": 0, "to": 10, "label": "16 clients", "color": "#fdf2e0"}],
               "series": [{"name": "running", "id": "r", "kind": "step", "color": "#3182bd", "width": 2,
                           "points": [[0, 1], [2.5, 3]]},
                          {"name": "target", "dash": "6 4", "points": []}]},
              {"categories": ["8 conn.", "32 conn."], "y": {"log": true, "min": 1},
               "series": [{"name": "Ray", "kind": "bar", "values": [1200, null], "whiskers": [null, 3]}]}]}
            """
        let chart = try Chart(json: Data(json.utf8))
        let expected = Chart(
            title: "t", width: 800, columns: 2,
            panels: [
                Panel(
                    id: "p", title: "swift-serve", height: 200, x: Axis(label: "seconds", minimum: 0, maximum: 12),
                    y: Axis(label: "replicas", maximum: 5, integer: true, ticks: 6),
                    series: [
                        Series(
                            id: "r", name: "running", kind: .step, color: "#3182bd",
                            points: [Point(0, 1), Point(2.5, 3)]),
                        Series(name: "target", dash: "6 4"),
                    ],
                    bands: [Band(from: 0, to: 10, label: "16 clients", color: "#fdf2e0")], note: "n"),
                Panel(
                    y: Axis(minimum: 1, log: true), categories: ["8 conn.", "32 conn."],
                    series: [Series(name: "Ray", kind: .bar, values: [1200, nil], whiskers: [nil, 3])]),
            ]
        )
        #expect(chart == expected)
        #expect(chart.svg() == expected.svg())
    }

    @Test(
        "a malformed description is refused with the field's path",
        arguments: [
            ("{", "not valid JSON"),
            ("[]", "must be an object, not a list"),
            ("{}", "panels: required field is missing"),
            (#"{"panels": []}"#, "panels: must list at least one panel"),
            (#"{"panels": {}}"#, "panels: must be a list, not an object"),
            (#"{"width": "wide", "panels": [{}]}"#, "width: must be a number, not a string"),
            (#"{"columns": 1.5, "panels": [{}]}"#, "columns: must be a whole number from 1 to 16"),
            (#"{"panels": [{"serise": []}]}"#, "panels[0].serise: unknown field; known: id, title, height"),
            (
                #"{"panels": [{"series": [{"kind": "area"}]}]}"#,
                #"panels[0].series[0].kind: must be one of "line", "step", "bar", not "area""#
            ),
            (
                #"{"panels": [{}, {"series": [{"points": [[0, 1], [2]]}]}]}"#,
                "panels[1].series[0].points[1]: must be a pair [x, y] of numbers"
            ),
            (
                #"{"panels": [{"series": [{"width": true}]}]}"#,
                "panels[0].series[0].width: must be a number, not a boolean"
            ),
            (
                #"{"panels": [{"series": [{"values": [1]}]}]}"#,
                "panels[0].series[0].values: does not apply to a line series"
            ),
            (
                #"{"panels": [{"series": [{"kind": "bar", "values": [1]}]}]}"#,
                "panels[0].series[0].kind: a bar series needs the panel's categories"
            ),
            (
                #"{"panels": [{"categories": ["a", "b"], "series": [{"kind": "bar", "values": [1]}]}]}"#,
                "panels[0].series[0].values: must hold one entry per category (2), not 1"
            ),
            (
                #"{"panels": [{"categories": ["a"], "series": [{"kind": "bar", "values": ["1"]}]}]}"#,
                "panels[0].series[0].values[0]: must be a number or null, not a string"
            ),
            (#"{"panels": [{"categories": [1]}]}"#, "panels[0].categories[0]: must be a string, not a number"),
            (#"{"panels": [{"x": {"min": 5, "max": 1}}]}"#, "panels[0].x.max: must be greater than min (5)"),
            (#"{"panels": [{"y": {"log": true, "min": 0}}]}"#, "panels[0].y.min: must be positive on a log scale"),
            (#"{"panels": [{"bands": [{"from": 1}]}]}"#, "panels[0].bands[0].to: required field is missing"),
        ]
    )
    func malformed(json: String, expected: String) {
        let error = #expect(throws: ChartSpecError.self) { _ = try Chart(json: Data(json.utf8)) }
        #expect(error?.description.hasPrefix(expected) == true, "\(error.map { "\($0)" } ?? "no error")")
    }
}
