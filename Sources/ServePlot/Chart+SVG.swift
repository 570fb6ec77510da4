import Foundation

extension Chart {
    /// The chart as a self-contained SVG document: white background, no scripts, no fonts or
    /// images loaded from elsewhere. Deterministic: the same chart gives the same bytes (numbers
    /// are written at 0.1 px, by integer arithmetic, not by the locale). Values that are not
    /// finite are left out; an empty or flat range is widened to one unit, so no axis divides by
    /// zero.
    public func svg() -> String {
        let width = Self.bounded(self.width, 200, 20_000, otherwise: Self.defaultWidth)
        let columns = min(max(self.columns, 1), max(self.panels.count, 1))
        let cellWidth = width / Double(columns)
        let legendWidth = min(self.legendWidth(), cellWidth / 2)
        var body = ""
        var top = self.title.isEmpty ? 12.0 : Layout.chartTitle
        for rowStart in stride(from: 0, to: self.panels.count, by: columns) {
            let row = self.panels[rowStart..<min(rowStart + columns, self.panels.count)]
            for (column, panel) in row.enumerated() {
                let left = Double(column) * cellWidth
                let plot = Frame(
                    x: left + Layout.left,
                    y: top + (panel.title.isEmpty ? Layout.gap : Layout.panelTitle),
                    width: max(cellWidth - Layout.left - legendWidth, 40),
                    height: Self.bounded(panel.height, 20, 5_000, otherwise: Panel.defaultHeight)
                )
                var drawing = PanelDrawing(panel: panel, plot: plot, cellLeft: left)
                body += drawing.svg()
            }
            top += row.map { Self.spaceTaken(by: $0) }.max() ?? 0
        }
        let height = (top + Layout.gap).rounded(.up)
        let size = "width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\""
        var svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" \(size)"
        svg += " font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
        svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        if !self.title.isEmpty {
            let x = SVG.number(Layout.left)
            svg += "<text x=\"\(x)\" y=\"26\" font-size=\"16\" font-weight=\"bold\">\(SVG.escape(self.title))</text>\n"
        }
        return svg + body + "</svg>\n"
    }

    /// The right margin each panel keeps for its legend: as wide as the longest series name in
    /// the chart, so that stacked panels line up.
    func legendWidth() -> Double {
        let longest = self.panels.flatMap(\.series).map(\.name.count).max() ?? 0
        guard longest > 0 else { return Layout.gap }
        return Layout.gap + Layout.legendSample + 6 + Double(longest) * Layout.characterWidth + 8
    }

    /// A panel's height with its title, tick labels and axis label.
    static func spaceTaken(by panel: Panel) -> Double {
        let lines =
            panel.categories.map { $0.split(separator: "\n", omittingEmptySubsequences: false).count }.max() ?? 1
        let labels = panel.categories.isEmpty ? Layout.tickLabel : 4 + Double(lines) * Layout.lineHeight
        return (panel.title.isEmpty ? Layout.gap : Layout.panelTitle)
            + Self.bounded(panel.height, 20, 5_000, otherwise: Panel.defaultHeight)
            + labels + (panel.x.label.isEmpty ? 0 : Layout.axisLabel) + Layout.rowGap
    }

    static func bounded(_ value: Double, _ low: Double, _ high: Double, otherwise fallback: Double) -> Double {
        value.isFinite ? min(max(value, low), high) : fallback
    }
}

/// Sizes in pixels.
enum Layout {
    /// Room for the y tick labels and the y axis label, left of each plot area.
    static let left = 64.0
    static let chartTitle = 44.0
    static let panelTitle = 26.0
    static let gap = 8.0
    static let tickLabel = 17.0
    static let lineHeight = 13.0
    static let axisLabel = 20.0
    static let rowGap = 16.0
    static let legendSample = 24.0
    static let legendLine = 20.0
    /// About the width of a 12 px sans-serif character.
    static let characterWidth = 7.0
}

struct Frame {
    var x: Double
    var y: Double
    var width: Double
    var height: Double

    var right: Double { self.x + self.width }
    var bottom: Double { self.y + self.height }
}

/// One panel's elements, in drawing order: the plot area, bands, grid and ticks, axis labels,
/// series, legend, note.
struct PanelDrawing {
    let panel: Panel
    let plot: Frame
    let cellLeft: Double
    let x: Scale
    let y: Scale
    private var out = ""

    /// The palette for series without a colour (d3's category colours).
    static let palette = ["#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#9ecae1", "#fdae6b", "#a1d99b"]

    init(panel: Panel, plot: Frame, cellLeft: Double) {
        self.panel = panel
        self.plot = plot
        self.cellLeft = cellLeft
        let xs = panel.series.flatMap { $0.points.map(\.x) } + panel.bands.flatMap { [$0.from, $0.to] }
        let ys = panel.series.flatMap { series in
            series.points.map(\.y) + series.values.compactMap { $0 } + series.whiskers.compactMap { $0 }
        }
        self.x = Scale(panel.x, data: xs)
        self.y = Scale(panel.y, data: ys)
    }

    mutating func svg() -> String {
        let id = self.panel.id.isEmpty ? "" : " id=\"\(SVG.escape(self.panel.id))\""
        self.out = "<g\(id)>\n"
        self.emit(
            "rect", ["x": self.plot.x, "y": self.plot.y, "width": self.plot.width, "height": self.plot.height],
            ["fill": "#fbfbfb", "stroke": "#999"])
        self.drawBands()
        self.drawYAxis()
        if self.panel.categories.isEmpty { self.drawXAxis() } else { self.drawCategories() }
        if !self.panel.title.isEmpty {
            self.text(self.panel.title, x: self.plot.x, y: self.plot.y - 8, ["font-size": "13"])
        }
        for (index, series) in self.panel.series.enumerated() {
            let color = series.color ?? Self.palette[index % Self.palette.count]
            switch series.kind {
            case .line, .step: self.drawLine(series, color: color)
            case .bar: self.drawBars(series, index: index, color: color)
            }
        }
        self.drawLegend()
        if !self.panel.note.isEmpty {
            self.text(
                self.panel.note, x: self.plot.x + self.plot.width / 2, y: self.plot.y + self.plot.height / 2,
                ["text-anchor": "middle", "fill": "#c00"])
        }
        return self.out + "</g>\n"
    }

    // MARK: axes

    private mutating func drawBands() {
        for band in self.panel.bands where self.panel.categories.isEmpty {
            guard let from = self.x.position(band.from), let to = self.x.position(band.to) else { continue }
            let left = self.plot.x + min(from, to) * self.plot.width
            let width = abs(to - from) * self.plot.width
            self.emit(
                "rect", ["x": left, "y": self.plot.y, "width": width, "height": self.plot.height],
                ["fill": band.color ?? "#fdf2e0"])
            if !band.label.isEmpty {
                self.text(
                    band.label, x: left + width / 2, y: self.plot.y + 14, ["text-anchor": "middle", "fill": "#a60"])
            }
        }
    }

    private mutating func drawYAxis() {
        for tick in self.y.ticks {
            guard let position = self.y.position(tick.value) else { continue }
            let ty = self.plot.bottom - position * self.plot.height
            self.emit("line", ["x1": self.plot.x, "y1": ty, "x2": self.plot.right, "y2": ty], ["stroke": "#e3e3e3"])
            self.emit("line", ["x1": self.plot.x - 4, "y1": ty, "x2": self.plot.x, "y2": ty], ["stroke": "#333"])
            self.text(tick.label, x: self.plot.x - 7, y: ty + 4, ["text-anchor": "end"])
        }
        let label = self.panel.y.label + (self.panel.y.log ? " (log scale)" : "")
        if !label.isEmpty {
            let labelX = self.cellLeft + 16
            let labelY = self.plot.y + self.plot.height / 2
            self.text(
                label, x: labelX, y: labelY,
                ["text-anchor": "middle", "transform": "rotate(-90 \(SVG.number(labelX)) \(SVG.number(labelY)))"])
        }
    }

    private mutating func drawXAxis() {
        for tick in self.x.ticks {
            guard let position = self.x.position(tick.value) else { continue }
            let tx = self.plot.x + position * self.plot.width
            self.emit("line", ["x1": tx, "y1": self.plot.y, "x2": tx, "y2": self.plot.bottom], ["stroke": "#eeeeee"])
            self.emit(
                "line", ["x1": tx, "y1": self.plot.bottom, "x2": tx, "y2": self.plot.bottom + 4], ["stroke": "#333"])
            self.text(tick.label, x: tx, y: self.plot.bottom + Layout.tickLabel, ["text-anchor": "middle"])
        }
        self.drawXLabel(below: self.plot.bottom + Layout.tickLabel)
    }

    private mutating func drawCategories() {
        var lowest = self.plot.bottom
        for (index, category) in self.panel.categories.enumerated() {
            let center = self.plot.x + (Double(index) + 0.5) * self.categoryWidth
            for (line, part) in category.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let ly = self.plot.bottom + 16 + Double(line) * Layout.lineHeight
                lowest = max(lowest, ly)
                self.text(String(part), x: center, y: ly, ["text-anchor": "middle"])
            }
        }
        self.drawXLabel(below: lowest)
    }

    private mutating func drawXLabel(below: Double) {
        guard !self.panel.x.label.isEmpty else { return }
        self.text(
            self.panel.x.label, x: self.plot.x + self.plot.width / 2, y: below + Layout.axisLabel,
            ["text-anchor": "middle"])
    }

    // MARK: series

    /// A polyline through the points; a step series holds each value until the next point's x.
    /// A lone point gets a dot, since a one-point polyline draws nothing.
    private mutating func drawLine(_ series: Series, color: String) {
        var points: [(Double, Double)] = []
        for point in series.points {
            guard let px = self.x.position(point.x), let py = self.y.position(point.y) else { continue }
            let at = (self.plot.x + px * self.plot.width, self.plot.bottom - py * self.plot.height)
            if series.kind == .step, let last = points.last {
                points.append((at.0, last.1))
            }
            points.append(at)
        }
        guard !points.isEmpty else { return }
        var attributes = self.strokeAttributes(series, color: color)
        attributes["fill"] = "none"
        attributes["stroke-linejoin"] = "round"
        if !series.id.isEmpty { attributes["id"] = series.id }
        attributes["points"] = points.map { "\(SVG.number($0.0)),\(SVG.number($0.1))" }.joined(separator: " ")
        self.emit("polyline", [:], attributes)
        if points.count == 1 {
            self.emit("circle", ["cx": points[0].0, "cy": points[0].1, "r": max(series.width, 2)], ["fill": color])
        }
    }

    private var categoryWidth: Double {
        self.plot.width / Double(max(self.panel.categories.count, 1))
    }

    /// One bar per category, beside the panel's other bar series; a whisker marks a second
    /// value on it; a missing value says "n/a".
    private mutating func drawBars(_ series: Series, index: Int, color: String) {
        let bars = self.panel.series.filter { $0.kind == .bar }.count
        let slot = self.panel.series[..<index].filter { $0.kind == .bar }.count
        let barWidth = min(40, self.categoryWidth * 0.8 / Double(max(bars, 1)))
        for (category, label) in self.panel.categories.enumerated() {
            let groupLeft =
                self.plot.x + Double(category) * self.categoryWidth + (self.categoryWidth - Double(bars) * barWidth) / 2
            let left = groupLeft + Double(slot) * barWidth
            let value = category < series.values.count ? series.values[category] : nil
            var top: Double?
            if let value, let position = self.y.position(value) {
                let barTop = self.plot.bottom - position * self.plot.height
                top = barTop
                self.out +=
                    "<rect x=\"\(SVG.number(left))\" y=\"\(SVG.number(barTop))\" width=\"\(SVG.number(barWidth - 2))\" "
                    + "height=\"\(SVG.number(self.plot.bottom - barTop))\" fill=\"\(SVG.escape(color))\">"
                    + "<title>\(SVG.escape(self.tooltip(series, category: label, value: value)))</title></rect>\n"
                if barWidth >= 30 {
                    self.text(SVG.short(value), x: left + barWidth / 2 - 1, y: barTop - 3, ["text-anchor": "middle"])
                }
            } else {
                self.text("n/a", x: left + 2, y: self.plot.bottom - 4, ["font-size": "9", "fill": "#c00"])
            }
            let whisker = category < series.whiskers.count ? series.whiskers[category] : nil
            if let whisker, let position = self.y.position(whisker) {
                let wy = self.plot.bottom - position * self.plot.height
                self.emit(
                    "line", ["x1": left, "y1": wy, "x2": left + barWidth - 2, "y2": wy],
                    ["stroke": "#000", "stroke-width": "2"])
                let center = left + barWidth / 2 - 1
                self.emit("line", ["x1": center, "y1": wy, "x2": center, "y2": top ?? wy], ["stroke": "#000"])
            }
        }
    }

    /// "Ray Serve, 1 replica 8 conn.: 0.2 ms": what a bar shows when pointed at.
    private func tooltip(_ series: Series, category: String, value: Double) -> String {
        let place = category.split(separator: "\n").joined(separator: " ")
        var text = [series.name, place].filter { !$0.isEmpty }.joined(separator: ", ")
        text += (text.isEmpty ? "" : ": ") + SVG.short(value)
        return self.panel.y.label.isEmpty ? text : text + " " + self.panel.y.label
    }

    /// In the right margin: a sample of each named series' stroke (a square for bars) and its name.
    private mutating func drawLegend() {
        let legendX = self.plot.right + Layout.gap * 2
        var entry = 0
        for (index, series) in self.panel.series.enumerated() where !series.name.isEmpty {
            let color = series.color ?? Self.palette[index % Self.palette.count]
            let ly = self.plot.y + 14 + Double(entry) * Layout.legendLine
            entry += 1
            if series.kind == .bar {
                self.emit("rect", ["x": legendX + 7, "y": ly - 10, "width": 10, "height": 10], ["fill": color])
            } else {
                self.emit(
                    "line", ["x1": legendX, "y1": ly - 4, "x2": legendX + Layout.legendSample, "y2": ly - 4],
                    self.strokeAttributes(series, color: color))
            }
            self.text(series.name, x: legendX + Layout.legendSample + 6, y: ly, [:])
        }
    }

    private func strokeAttributes(_ series: Series, color: String) -> [String: String] {
        var attributes = [
            "stroke": color, "stroke-width": SVG.number(Chart.bounded(series.width, 0.1, 50, otherwise: 2)),
        ]
        if let dash = series.dash { attributes["stroke-dasharray"] = dash }
        return attributes
    }

    // MARK: output

    /// An element with numeric attributes (written at 0.1 px) and text ones, each set in name
    /// order, so the output does not depend on dictionary order.
    private mutating func emit(_ name: String, _ numbers: [String: Double], _ strings: [String: String]) {
        var attributes = numbers.mapValues(SVG.number)
        attributes.merge(strings) { _, string in string }
        let written = attributes.keys.sorted().map { " \($0)=\"\(SVG.escape(attributes[$0]!))\"" }.joined()
        self.out += "<\(name)\(written)/>\n"
    }

    private mutating func text(_ content: String, x: Double, y: Double, _ attributes: [String: String]) {
        let written = attributes.keys.sorted().map { " \($0)=\"\(SVG.escape(attributes[$0]!))\"" }.joined()
        self.out += "<text x=\"\(SVG.number(x))\" y=\"\(SVG.number(y))\"\(written)>\(SVG.escape(content))</text>\n"
    }
}

/// An axis's range, ticks and the position of a value on it.
struct Scale {
    let lower: Double
    let upper: Double
    let log: Bool
    /// Each tick and its label (as many decimals as the step between ticks has).
    let ticks: [(value: Double, label: String)]

    init(_ axis: Axis, data: [Double]) {
        self.log = axis.log
        let explicitLower = axis.minimum.flatMap { $0.isFinite ? $0 : nil }
        let explicitUpper = axis.maximum.flatMap { $0.isFinite ? $0 : nil }
        if axis.log {
            // Rounded out to powers of ten, at least one decade.
            let positive = data.filter { $0.isFinite && $0 > 0 }
            let low = Self.powerOfTen(atMost: explicitLower.flatMap { $0 > 0 ? $0 : nil } ?? positive.min() ?? 1)
            let top = explicitUpper.flatMap { $0 > 0 ? $0 : nil } ?? positive.max() ?? 10
            var high = Self.powerOfTen(atMost: top).exponent
            if Self.power(of: high) < top * (1 - 1e-12) { high += 1 }
            high = max(high, low.exponent + 1)
            self.lower = low.value
            self.upper = Self.power(of: high)
            self.ticks = (low.exponent...high).map { (Self.power(of: $0), Self.logLabel($0)) }
            return
        }
        let finite = data.filter(\.isFinite)
        var lower = explicitLower ?? min(0, finite.min() ?? 0)
        var upper = explicitUpper ?? max(finite.max() ?? 1, lower)
        if !(upper > lower) { upper = lower + 1 }
        var step = Self.niceStep(span: upper - lower, count: axis.ticks)
        if axis.integer { step = max(step.rounded(.up), 1) }
        if explicitLower == nil { lower = (lower / step).rounded(.down) * step }
        if explicitUpper == nil { upper = (upper / step - 1e-9).rounded(.up) * step }
        if !(upper > lower) { upper = lower + step }
        self.lower = lower
        self.upper = upper
        let first = (lower / step - 1e-9).rounded(.up)
        let last = (upper / step + 1e-9).rounded(.down)
        let count = min(max(Int(last - first) + 1, 0), 1_000)
        let places = Self.places(of: step)
        self.ticks = (0..<count).map { index in
            let value = (first + Double(index)) * step
            return (value, SVG.decimal(value, places: places))
        }
    }

    /// Where `value` sits, from 0 (the lower end) to 1 (the upper end), clamped to the range;
    /// nil when it cannot be drawn (not finite, or not positive on a log scale).
    func position(_ value: Double) -> Double? {
        guard value.isFinite else { return nil }
        let fraction: Double
        if self.log {
            guard value > 0 else { return nil }
            fraction = (log10(value) - log10(self.lower)) / (log10(self.upper) - log10(self.lower))
        } else {
            fraction = (value - self.lower) / (self.upper - self.lower)
        }
        return fraction.isFinite ? min(max(fraction, 0), 1) : nil
    }

    /// "0.01", "1000", "1e6".
    static func logLabel(_ exponent: Int) -> String {
        (-4...5).contains(exponent) ? SVG.short(Self.power(of: exponent)) : "1e\(exponent)"
    }

    /// 1, 2 or 5 times a power of ten: the step that gives about `count` ticks over `span`.
    static func niceStep(span: Double, count: Int) -> Double {
        let rough = span / Double(min(max(count, 1), 100))
        guard rough.isFinite, rough > 0 else { return 1 }
        let power = Self.powerOfTen(atMost: rough).value
        for factor in [1.0, 2, 5] where power * factor >= rough {
            return power * factor
        }
        return power * 10
    }

    /// The largest power of ten at or below `value` (positive), and its exponent; by repeated
    /// multiplication, so every platform gets the same one.
    static func powerOfTen(atMost value: Double) -> (value: Double, exponent: Int) {
        var exponent = 0
        while Self.power(of: exponent) > value, exponent > -300 { exponent -= 1 }
        while Self.power(of: exponent + 1) <= value, exponent < 300 { exponent += 1 }
        return (Self.power(of: exponent), exponent)
    }

    static func power(of exponent: Int) -> Double {
        var result = 1.0
        for _ in 0..<exponent.magnitude { result *= 10 }
        return exponent < 0 ? 1 / result : result
    }

    /// The decimals `step` needs (0.05: 2).
    static func places(of step: Double) -> Int {
        var places = 0
        var scaled = step
        while places < 6, (scaled - scaled.rounded()).magnitude > 1e-6 * max(scaled, 1) {
            scaled *= 10
            places += 1
        }
        return places
    }
}

/// Text and numbers as SVG writes them.
enum SVG {
    /// A coordinate, at 0.1 px.
    static func number(_ value: Double) -> String {
        Self.decimal(value, places: 1)
    }

    /// `value` with `places` decimals (at most 6), by integer arithmetic; never "-0".
    static func decimal(_ value: Double, places: Int) -> String {
        let places = min(max(places, 0), 6)
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (value * scale).rounded()
        guard scaled.isFinite, scaled.magnitude < 1e15 else { return value.isFinite && value < 0 ? "-1e15" : "1e15" }
        let units = Int(scaled)
        let digits = String(units.magnitude)
        let sign = units < 0 ? "-" : ""
        guard places > 0 else { return sign + digits }
        let padded = String(repeating: "0", count: max(0, places + 1 - digits.count)) + digits
        return sign + padded.dropLast(places) + "." + padded.suffix(places)
    }

    /// About four significant digits, no trailing zeros: "123.5", "0.0123", "45000".
    static func short(_ value: Double) -> String {
        var places = 3
        var magnitude = value.magnitude
        while magnitude >= 10, places > 0 {
            magnitude /= 10
            places -= 1
        }
        while magnitude > 0, magnitude < 1, places < 6 {
            magnitude *= 10
            places += 1
        }
        var text = Self.decimal(value, places: places)
        if text.contains(".") {
            while text.hasSuffix("0") { text.removeLast() }
            if text.hasSuffix(".") { text.removeLast() }
        }
        return text
    }

    /// Text safe in an element or a quoted attribute: markup characters escaped, and the
    /// characters XML 1.0 does not allow (controls other than tab and line breaks) left out.
    static func escape(_ text: String) -> String {
        var output = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": output += "&amp;"
            case "<": output += "&lt;"
            case ">": output += "&gt;"
            case "\"": output += "&quot;"
            case "'": output += "&#39;"
            case "\t", "\n", "\r": output.unicodeScalars.append(scalar)
            case _ where scalar.value < 0x20 || scalar.value == 0xFFFE || scalar.value == 0xFFFF: continue
            default: output.unicodeScalars.append(scalar)
            }
        }
        return output
    }
}
