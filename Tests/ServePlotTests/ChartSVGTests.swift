import Foundation
import Testing

@testable import ServePlot

#if canImport(FoundationXML)
import FoundationXML
#endif

@Suite("Chart renderer")
struct ChartSVGTests {
    static let timeline = Chart(
        title: "replicas",
        panels: [
            Panel(
                id: "replicas",
                x: Axis(label: "time (s)", minimum: 0, maximum: 12),
                y: Axis(label: "replicas", integer: true),
                series: [
                    Series(
                        id: "running", name: "running", kind: .step, points: [Point(0, 1), Point(4, 3), Point(9, 1)]),
                    Series(
                        id: "target", name: "target", kind: .step, dash: "6 4",
                        points: [Point(0, 1), Point(3, 4), Point(8, 1)]),
                    Series(id: "load", name: "load", points: [Point(0, 0), Point(2, 16), Point(12, 0)]),
                ],
                bands: [Band(from: 2, to: 7, label: "16 clients")]
            )
        ]
    )

    @Test("the same chart draws the same bytes, a well-formed SVG")
    func deterministic() throws {
        let svg = Self.timeline.svg()
        #expect(svg == Self.timeline.svg())
        let parsed = try SVGCollector.parse(svg)
        #expect(parsed.root == "svg")
        #expect(parsed.groups == ["replicas"])
        #expect(Set(parsed.polylines.keys) == ["running", "target", "load"])
        #expect(
            parsed.texts.isSuperset(of: [
                "replicas", "time (s)", "running", "target", "load", "16 clients", "0", "5", "10", "20",
            ]))
    }

    @Test("a step series holds each value until the next point; a line joins them")
    func steps() throws {
        let parsed = try SVGCollector.parse(Self.timeline.svg())
        let running = try #require(parsed.polylines["running"])
        #expect(running.count == 5)
        #expect(running[1].y == running[0].y && running[1].x == running[2].x)
        #expect(running[2].y < running[1].y, "3 replicas drawn above 1")
        #expect(parsed.polylines["load"]?.count == 3)
        for (id, points) in parsed.polylines {
            #expect(
                points.allSatisfy { $0.x >= 64 && $0.x <= parsed.width && $0.y >= 0 && $0.y <= parsed.height }, "\(id)")
        }
    }

    @Test("text is escaped, and characters XML cannot hold are left out")
    func escaping() throws {
        let awkward = "a <b> & \"c\" 'd'\u{1}"
        let chart = Chart(
            title: awkward,
            panels: [
                Panel(
                    id: "p\"1", title: awkward, x: Axis(label: awkward), categories: [awkward],
                    series: [Series(name: awkward, kind: .bar, color: "#000\"/><script>", values: [1])], note: awkward)
            ]
        )
        let svg = chart.svg()
        #expect(!svg.contains("<script>"))
        let parsed = try SVGCollector.parse(svg)
        #expect(parsed.texts.contains("a <b> & \"c\" 'd'"))
        #expect(parsed.groups == ["p\"1"])
    }

    @Test("empty panels, empty series, one point and flat data draw finite coordinates")
    func degenerate() throws {
        let chart = Chart(
            columns: 2,
            panels: [
                Panel(),
                Panel(series: [Series(name: "nothing")], note: "not measured"),
                Panel(series: [Series(id: "one", name: "one", points: [Point(5, 5)])]),
                Panel(
                    y: Axis(log: true), series: [Series(id: "flat", name: "flat", points: [Point(1, 3), Point(2, 3)])]),
                Panel(series: [
                    Series(id: "odd", name: "odd", points: [Point(.nan, 1), Point(1, .infinity), Point(2, 2)])
                ]),
                Panel(x: Axis(minimum: .nan, maximum: .infinity), y: Axis(minimum: 3, maximum: 3)),
            ]
        )
        let svg = chart.svg()
        #expect(!svg.lowercased().contains("nan") && !svg.lowercased().contains("inf"))
        let parsed = try SVGCollector.parse(svg)
        #expect(parsed.texts.contains("not measured"))
        #expect(parsed.polylines["one"]?.count == 1)
        #expect(parsed.circles == 2, "a lone point gets a dot (one, and the one finite point of odd)")
        #expect(parsed.polylines["flat"]?.count == 2)
        #expect(parsed.polylines["odd"]?.count == 1, "points that are not finite are left out")
        #expect(Chart(panels: []).svg().contains("</svg>"))
    }

    @Test("panels in columns share a row; stacked ones share the plot's left and right")
    func layout() throws {
        let panel = Panel(series: [Series(name: "s", points: [Point(0, 1)])])
        let side = try SVGCollector.parse(Chart(columns: 2, panels: [panel, panel]).svg())
        #expect(side.frames.count == 2 && side.frames[0].y == side.frames[1].y && side.frames[0].x < side.frames[1].x)
        let stacked = try SVGCollector.parse(Chart(panels: [panel, panel]).svg())
        #expect(
            stacked.frames.count == 2 && stacked.frames[0].x == stacked.frames[1].x
                && stacked.frames[0].y < stacked.frames[1].y)
        #expect(stacked.height > side.height)
    }

    @Test("bars: one per category and series, n/a where a value is missing, whiskers")
    func bars() throws {
        let chart = Chart(
            panels: [
                Panel(
                    y: Axis(label: "ms", log: true), categories: ["8 conn.", "32 conn.\n2 replicas"],
                    series: [
                        Series(name: "a", kind: .bar, values: [0.2, 3], whiskers: [0.5, nil]),
                        Series(name: "b", kind: .bar, values: [nil, 40], whiskers: [nil, 90]),
                    ])
            ]
        )
        let parsed = try SVGCollector.parse(chart.svg())
        #expect(
            parsed.titles == ["a, 8 conn.: 0.2 ms", "a, 32 conn. 2 replicas: 3 ms", "b, 32 conn. 2 replicas: 40 ms"])
        #expect(
            parsed.texts.isSuperset(of: ["n/a", "ms (log scale)", "32 conn.", "2 replicas", "0.1", "1", "10", "100"]))
    }

    @Test("axis ranges and ticks")
    func ticks() {
        func labels(_ axis: Axis, _ data: [Double]) -> [String] { Scale(axis, data: data).ticks.map(\.label) }
        #expect(labels(Axis(minimum: 0, maximum: 52, ticks: 10), [52]) == ["0", "10", "20", "30", "40", "50"])
        #expect(labels(Axis(ticks: 10), [52]) == ["0", "10", "20", "30", "40", "50", "60"])
        #expect(labels(Axis(integer: true), [4]) == ["0", "1", "2", "3", "4"])
        #expect(labels(Axis(integer: true), []) == ["0", "1"])
        #expect(labels(Axis(), [0, 0.3]) == ["0.0", "0.1", "0.2", "0.3"])
        #expect(labels(Axis(), [-3, 7]) == ["-4", "-2", "0", "2", "4", "6", "8"])
        #expect(labels(Axis(log: true), [3, 2500]) == ["1", "10", "100", "1000", "10000"])
        #expect(labels(Axis(log: true), [0.004, 0.2, -1]) == ["0.001", "0.01", "0.1", "1"])
        #expect(labels(Axis(log: true), [2e6]) == ["1e6", "1e7"])
        #expect(labels(Axis(log: true), [100]) == ["100", "1000"])
        let scale = Scale(Axis(minimum: 0, maximum: 10), data: [])
        #expect(
            scale.position(5) == 0.5 && scale.position(20) == 1 && scale.position(-1) == 0
                && scale.position(.nan) == nil)
        #expect(Scale(Axis(log: true), data: [10]).position(0) == nil)
    }

    @Test("numbers are written without the locale, and never as -0")
    func numbers() {
        #expect(SVG.decimal(-0.04, places: 1) == "0.0")
        #expect(SVG.decimal(2.25, places: 1) == "2.3")
        #expect(SVG.decimal(-1.25, places: 2) == "-1.25")
        #expect(SVG.decimal(0.05, places: 2) == "0.05")
        #expect(SVG.decimal(7, places: 0) == "7")
        #expect(SVG.short(123.456) == "123.5")
        #expect(SVG.short(0.0123) == "0.0123")
        #expect(SVG.short(45000) == "45000")
        #expect(SVG.short(2) == "2")
    }
}

/// What the tests read back from an SVG: the root and its size, group ids, polylines' points,
/// plot frames, bar titles, texts.
final class SVGCollector: NSObject, XMLParserDelegate {
    var root: String?
    var width = 0.0
    var height = 0.0
    var groups: [String] = []
    var polylines: [String: [(x: Double, y: Double)]] = [:]
    var frames: [(x: Double, y: Double)] = []
    var circles = 0
    var texts: Set<String> = []
    var titles: [String] = []
    private var text: String?

    static func parse(_ svg: String) throws -> SVGCollector {
        let collector = SVGCollector()
        let parser = XMLParser(data: Data(svg.utf8))
        parser.delegate = collector
        guard parser.parse() else {
            throw CollectorFailure(description: "not well-formed: \(parser.parserError.map { "\($0)" } ?? "?")\n\(svg)")
        }
        return collector
    }

    func parser(
        _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
        qualifiedName qName: String?, attributes: [String: String] = [:]
    ) {
        if self.root == nil {
            self.root = elementName
            self.width = Double(attributes["width"] ?? "") ?? 0
            self.height = Double(attributes["height"] ?? "") ?? 0
        }
        switch elementName {
        case "g":
            if let id = attributes["id"] { self.groups.append(id) }
        case "polyline":
            let points = (attributes["points"] ?? "").split(separator: " ").compactMap {
                pair -> (x: Double, y: Double)? in
                let parts = pair.split(separator: ",")
                guard parts.count == 2, let x = Double(parts[0]), let y = Double(parts[1]) else { return nil }
                return (x, y)
            }
            self.polylines[attributes["id"] ?? "?"] = points
        case "rect" where attributes["fill"] == "#fbfbfb":
            self.frames.append((Double(attributes["x"] ?? "") ?? -1, Double(attributes["y"] ?? "") ?? -1))
        case "circle":
            self.circles += 1
        case "text", "title":
            self.text = ""
        default:
            break
        }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        self.text? += string
    }

    func parser(
        _ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?
    ) {
        guard let text = self.text else { return }
        if elementName == "text" { self.texts.insert(text) }
        if elementName == "title" { self.titles.append(text) }
        self.text = nil
    }
}

struct CollectorFailure: Error, CustomStringConvertible {
    var description: String
}
