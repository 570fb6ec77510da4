/// A chart to draw as SVG (`Chart.svg()`): panels in a grid, each with its own axes, series,
/// shaded bands and legend. One column stacks the panels over a shared width (`serve simulate`'s
/// requests over replicas); more put them side by side (the autoscaling benchmark's two systems).
///
/// Presentation only: the numbers come from whoever measured or decided them. `serve-plot` reads
/// the same value from JSON (`Chart(json:)`, benchmarks/README.md "Plots"), so the benchmarks'
/// Python scripts and the Swift tools draw with one renderer.
public struct Chart: Sendable, Hashable {
    /// Drawn bold at the top; none when empty.
    public var title: String
    /// The SVG's width in pixels; its height follows from the panels.
    public var width: Double
    /// Panels per row.
    public var columns: Int
    public var panels: [Panel]

    public static let defaultWidth = 960.0

    public init(title: String = "", width: Double = Self.defaultWidth, columns: Int = 1, panels: [Panel]) {
        self.title = title
        self.width = width
        self.columns = columns
        self.panels = panels
    }
}

/// One plot area with its axes.
public struct Panel: Sendable, Hashable {
    /// The `id` of the panel's `<g>`; none when empty.
    public var id: String
    /// Drawn above the plot area; none when empty.
    public var title: String
    /// The plot area's height in pixels.
    public var height: Double
    public var x: Axis
    public var y: Axis
    /// A bar panel's groups along x, left to right (a "\n" breaks a label's line): each bar
    /// series has one value per category. Empty for a panel of line and step series, whose x is
    /// a number.
    public var categories: [String]
    public var series: [Series]
    /// Shaded spans of x behind the series (a load phase), numeric panels only.
    public var bands: [Band]
    /// Said in the middle of the plot area (e.g. "not measured"); none when empty.
    public var note: String

    public static let defaultHeight = 230.0

    public init(
        id: String = "",
        title: String = "",
        height: Double = Self.defaultHeight,
        x: Axis = Axis(),
        y: Axis = Axis(),
        categories: [String] = [],
        series: [Series] = [],
        bands: [Band] = [],
        note: String = ""
    ) {
        self.id = id
        self.title = title
        self.height = height
        self.x = x
        self.y = y
        self.categories = categories
        self.series = series
        self.bands = bands
        self.note = note
    }
}

/// An axis: its label and range. Without `minimum` it starts at 0, or lower for negative data;
/// without `maximum` it ends at the first tick at or above the data. Values outside the range
/// are drawn at its edge.
public struct Axis: Sendable, Hashable {
    public var label: String
    public var minimum: Double?
    public var maximum: Double?
    /// Ticks at whole numbers only (counts of things).
    public var integer: Bool
    /// Base-10 log scale: ticks at powers of ten; values at or below 0 are not drawn.
    public var log: Bool
    /// About how many ticks a linear axis gets.
    public var ticks: Int

    public init(
        label: String = "",
        minimum: Double? = nil,
        maximum: Double? = nil,
        integer: Bool = false,
        log: Bool = false,
        ticks: Int = 5
    ) {
        self.label = label
        self.minimum = minimum
        self.maximum = maximum
        self.integer = integer
        self.log = log
        self.ticks = ticks
    }
}

/// One series: a line through its points, a step line (each value holds until the next
/// point's x, as a replica count does), or bars, one per category.
public struct Series: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case line
        case step
        case bar
    }

    /// The `id` of its `<polyline>`; none when empty.
    public var id: String
    /// Its legend entry; none when empty.
    public var name: String
    public var kind: Kind
    /// An SVG colour; nil takes the palette's next one.
    public var color: String?
    /// An SVG `stroke-dasharray` ("6 4"), for line and step series.
    public var dash: String?
    /// The stroke width of line and step series.
    public var width: Double
    /// Line and step series: the points, in the order drawn.
    public var points: [Point]
    /// Bar series: one value per category; nil is not measured ("n/a" is drawn).
    public var values: [Double?]
    /// Bar series: a mark at this value on each bar (a p99 over a p50 bar); nil draws none.
    public var whiskers: [Double?]

    public init(
        id: String = "",
        name: String,
        kind: Kind = .line,
        color: String? = nil,
        dash: String? = nil,
        width: Double = 2,
        points: [Point] = [],
        values: [Double?] = [],
        whiskers: [Double?] = []
    ) {
        self.id = id
        self.name = name
        self.kind = kind
        self.color = color
        self.dash = dash
        self.width = width
        self.points = points
        self.values = values
        self.whiskers = whiskers
    }
}

public struct Point: Sendable, Hashable {
    public var x: Double
    public var y: Double

    public init(_ x: Double, _ y: Double) {
        self.x = x
        self.y = y
    }
}

/// A shaded span of x, with a label at its top.
public struct Band: Sendable, Hashable {
    public var from: Double
    public var to: Double
    public var label: String
    public var color: String?

    public init(from: Double, to: Double, label: String = "", color: String? = nil) {
        self.from = from
        self.to = to
        self.label = label
        self.color = color
    }
}
