import Foundation

/// A chart description that cannot be drawn: what is wrong, at which field
/// (`panels[0].series[2].kind`).
public struct ChartSpecError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The field's path; empty for the document as a whole.
    public var path: String
    public var message: String

    public var description: String {
        self.path.isEmpty ? self.message : "\(self.path): \(self.message)"
    }
}

extension Chart {
    /// Reads the JSON description `serve-plot` draws (benchmarks/README.md, "Plots"):
    ///
    ///     {"title": "...", "width": 960, "columns": 1, "panels": [{
    ///        "id": "...", "title": "...", "height": 230, "note": "...",
    ///        "x": {"label": "...", "min": 0, "max": 60, "integer": false, "log": false, "ticks": 5},
    ///        "y": {...}, "categories": ["1 replica", ...],
    ///        "bands": [{"from": 0, "to": 10, "label": "...", "color": "#fdf2e0"}],
    ///        "series": [{"name": "...", "id": "...", "kind": "line|step|bar", "color": "#3182bd",
    ///                    "dash": "6 4", "width": 2, "points": [[0, 1], ...],
    ///                    "values": [1.5, null], "whiskers": [2.0, null]}]}]}
    ///
    /// Only `panels` is required. A field that is not known is refused (with the known ones), as
    /// is a wrong type, a number that is out of range, points on a bar series, and
    /// values on a line.
    public init(json data: Data) throws(ChartSpecError) {
        let document: PlotJSON
        do {
            document = try JSONDecoder().decode(PlotJSON.self, from: data)
        } catch {
            throw ChartSpecError(path: "", message: "not valid JSON: \(Self.describe(error))")
        }
        self = try SpecReader.chart(document)
    }

    private static func describe(_ error: any Error) -> String {
        guard case DecodingError.dataCorrupted(let context) = error else { return "\(error)" }
        let underlying = (context.underlyingError as? NSError)?.userInfo[NSDebugDescriptionErrorKey] as? String
        return underlying ?? context.debugDescription
    }
}

/// Any JSON value, as `JSONDecoder` reads it (a true is never a number here, nor a number a
/// true).
enum PlotJSON: Decodable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([PlotJSON])
    case object([String: PlotJSON])

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        if let object = try? decoder.container(keyedBy: Key.self) {
            var fields: [String: PlotJSON] = [:]
            for key in object.allKeys { fields[key.stringValue] = try object.decode(PlotJSON.self, forKey: key) }
            self = .object(fields)
        } else if var array = try? decoder.unkeyedContainer() {
            var items: [PlotJSON] = []
            while !array.isAtEnd { items.append(try array.decode(PlotJSON.self)) }
            self = .array(items)
        } else {
            let value = try decoder.singleValueContainer()
            if value.decodeNil() {
                self = .null
            } else if let bool = try? value.decode(Bool.self) {
                self = .bool(bool)
            } else if let number = try? value.decode(Double.self) {
                self = .number(number)
            } else {
                self = .string(try value.decode(String.self))
            }
        }
    }

    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "a list"
        case .object: "an object"
        }
    }
}

/// The checks, one field at a time, each error naming its path.
private enum SpecReader {
    typealias Fields = [String: PlotJSON]

    static func chart(_ document: PlotJSON) throws(ChartSpecError) -> Chart {
        let fields = try Self.object(document, at: "", known: ["title", "width", "columns", "panels"])
        guard let panelsValue = fields["panels"] else {
            throw ChartSpecError(path: "panels", message: "required field is missing")
        }
        let panels = try Self.each(Self.list(panelsValue, at: "panels", limit: 64), at: "panels", Self.panel)
        guard !panels.isEmpty else { throw ChartSpecError(path: "panels", message: "must list at least one panel") }
        return Chart(
            title: try Self.string(fields, "title", at: "") ?? "",
            width: try Self.number(fields, "width", at: "", in: 200...20_000) ?? Chart.defaultWidth,
            columns: Int(try Self.number(fields, "columns", at: "", in: 1...16, whole: true) ?? 1),
            panels: panels
        )
    }

    static func panel(_ value: PlotJSON, at path: String) throws(ChartSpecError) -> Panel {
        let fields = try Self.object(
            value, at: path, known: ["id", "title", "height", "x", "y", "categories", "series", "bands", "note"])
        var panel = Panel(
            id: try Self.string(fields, "id", at: path) ?? "",
            title: try Self.string(fields, "title", at: path) ?? "",
            height: try Self.number(fields, "height", at: path, in: 20...5_000) ?? Panel.defaultHeight,
            note: try Self.string(fields, "note", at: path) ?? ""
        )
        if let x = fields["x"] { panel.x = try Self.axis(x, at: Self.join(path, "x")) }
        if let y = fields["y"] { panel.y = try Self.axis(y, at: Self.join(path, "y")) }
        if let categories = fields["categories"] {
            let at = Self.join(path, "categories")
            panel.categories = try Self.each(Self.list(categories, at: at, limit: 1_000), at: at, Self.category)
        }
        if let series = fields["series"] {
            let at = Self.join(path, "series")
            let count = panel.categories.count
            panel.series = try Self.each(Self.list(series, at: at, limit: 64), at: at) {
                item, itemPath throws(ChartSpecError) in
                try Self.series(item, at: itemPath, categories: count)
            }
        }
        if let bands = fields["bands"] {
            let at = Self.join(path, "bands")
            panel.bands = try Self.each(Self.list(bands, at: at, limit: 64), at: at, Self.band)
        }
        return panel
    }

    static func category(_ value: PlotJSON, at path: String) throws(ChartSpecError) -> String {
        guard case .string(let text) = value else {
            throw ChartSpecError(path: path, message: "must be a string, not \(value.typeName)")
        }
        return text
    }

    static func axis(_ value: PlotJSON, at path: String) throws(ChartSpecError) -> Axis {
        let fields = try Self.object(value, at: path, known: ["label", "min", "max", "integer", "log", "ticks"])
        let axis = Axis(
            label: try Self.string(fields, "label", at: path) ?? "",
            minimum: try Self.number(fields, "min", at: path),
            maximum: try Self.number(fields, "max", at: path),
            integer: try Self.bool(fields, "integer", at: path) ?? false,
            log: try Self.bool(fields, "log", at: path) ?? false,
            ticks: Int(try Self.number(fields, "ticks", at: path, in: 2...20, whole: true) ?? 5)
        )
        if let minimum = axis.minimum, let maximum = axis.maximum, maximum <= minimum {
            throw ChartSpecError(
                path: Self.join(path, "max"), message: "must be greater than min (\(SVG.short(minimum)))")
        }
        if axis.log, let minimum = axis.minimum, minimum <= 0 {
            throw ChartSpecError(path: Self.join(path, "min"), message: "must be positive on a log scale")
        }
        return axis
    }

    static func series(_ value: PlotJSON, at path: String, categories: Int) throws(ChartSpecError) -> Series {
        let fields = try Self.object(
            value, at: path, known: ["id", "name", "kind", "color", "dash", "width", "points", "values", "whiskers"])
        var series = Series(
            id: try Self.string(fields, "id", at: path) ?? "",
            name: try Self.string(fields, "name", at: path) ?? "",
            color: try Self.string(fields, "color", at: path),
            dash: try Self.string(fields, "dash", at: path),
            width: try Self.number(fields, "width", at: path, in: 0.1...50) ?? 2
        )
        if let kind = try Self.string(fields, "kind", at: path) {
            guard let known = Series.Kind(rawValue: kind) else {
                let kinds = Series.Kind.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
                throw ChartSpecError(path: Self.join(path, "kind"), message: "must be one of \(kinds), not \"\(kind)\"")
            }
            series.kind = known
        }
        let isBar = series.kind == .bar
        guard isBar == (categories > 0) else {
            throw ChartSpecError(
                path: Self.join(path, "kind"),
                message: isBar
                    ? "a bar series needs the panel's categories" : "a panel with categories holds bar series only")
        }
        for (field, applies) in [("points", !isBar), ("values", isBar), ("whiskers", isBar)]
        where fields[field] != nil && !applies {
            throw ChartSpecError(
                path: Self.join(path, field), message: "does not apply to a \(series.kind.rawValue) series")
        }
        if let points = fields["points"] {
            let at = Self.join(path, "points")
            series.points = try Self.each(Self.list(points, at: at, limit: 1_000_000), at: at, Self.point)
        }
        series.values = try Self.optionalNumbers(fields, "values", at: path, count: categories)
        series.whiskers = try Self.optionalNumbers(fields, "whiskers", at: path, count: categories)
        return series
    }

    static func point(_ value: PlotJSON, at path: String) throws(ChartSpecError) -> Point {
        guard case .array(let pair) = value, pair.count == 2,
            case .number(let x) = pair[0], case .number(let y) = pair[1], x.isFinite, y.isFinite
        else {
            throw ChartSpecError(path: path, message: "must be a pair [x, y] of numbers")
        }
        return Point(x, y)
    }

    static func band(_ value: PlotJSON, at path: String) throws(ChartSpecError) -> Band {
        let fields = try Self.object(value, at: path, known: ["from", "to", "label", "color"])
        guard let from = try Self.number(fields, "from", at: path) else {
            throw ChartSpecError(path: Self.join(path, "from"), message: "required field is missing")
        }
        guard let to = try Self.number(fields, "to", at: path) else {
            throw ChartSpecError(path: Self.join(path, "to"), message: "required field is missing")
        }
        return Band(
            from: from, to: to, label: try Self.string(fields, "label", at: path) ?? "",
            color: try Self.string(fields, "color", at: path))
    }

    // MARK: fields

    static func object(_ value: PlotJSON, at path: String, known: [String]) throws(ChartSpecError) -> Fields {
        guard case .object(let fields) = value else {
            throw ChartSpecError(path: path, message: "must be an object, not \(value.typeName)")
        }
        if let unknown = fields.keys.sorted().first(where: { !known.contains($0) }) {
            throw ChartSpecError(
                path: Self.join(path, unknown), message: "unknown field; known: \(known.joined(separator: ", "))")
        }
        return fields
    }

    /// Reads each item of a list with its own path (`panels[2]`).
    static func each<Item>(
        _ items: [PlotJSON],
        at path: String,
        _ read: (PlotJSON, String) throws(ChartSpecError) -> Item
    ) throws(ChartSpecError) -> [Item] {
        var result: [Item] = []
        result.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            result.append(try read(item, "\(path)[\(index)]"))
        }
        return result
    }

    static func list(_ value: PlotJSON, at path: String, limit: Int) throws(ChartSpecError) -> [PlotJSON] {
        guard case .array(let items) = value else {
            throw ChartSpecError(path: path, message: "must be a list, not \(value.typeName)")
        }
        guard items.count <= limit else {
            throw ChartSpecError(path: path, message: "holds \(items.count) items; at most \(limit)")
        }
        return items
    }

    static func string(_ fields: Fields, _ key: String, at path: String) throws(ChartSpecError) -> String? {
        switch fields[key] {
        case nil, .null?: return nil
        case .string(let text)?: return text
        case let other?:
            throw ChartSpecError(path: Self.join(path, key), message: "must be a string, not \(other.typeName)")
        }
    }

    static func bool(_ fields: Fields, _ key: String, at path: String) throws(ChartSpecError) -> Bool? {
        switch fields[key] {
        case nil, .null?: return nil
        case .bool(let flag)?: return flag
        case let other?:
            throw ChartSpecError(path: Self.join(path, key), message: "must be true or false, not \(other.typeName)")
        }
    }

    static func number(
        _ fields: Fields,
        _ key: String,
        at path: String,
        in range: ClosedRange<Double> = -1e15...1e15,
        whole: Bool = false
    ) throws(ChartSpecError) -> Double? {
        switch fields[key] {
        case nil, .null?:
            return nil
        case .number(let number)? where range.contains(number) && (!whole || number == number.rounded()):
            return number
        case .number?:
            let what = whole ? "a whole number" : "a number"
            throw ChartSpecError(
                path: Self.join(path, key),
                message: "must be \(what) from \(SVG.short(range.lowerBound)) to \(SVG.short(range.upperBound))")
        case let other?:
            throw ChartSpecError(path: Self.join(path, key), message: "must be a number, not \(other.typeName)")
        }
    }

    /// A bar series' `values` or `whiskers`: a number or null per category.
    static func optionalNumbers(
        _ fields: Fields, _ key: String, at path: String, count: Int
    ) throws(ChartSpecError) -> [Double?] {
        guard let value = fields[key] else { return [] }
        let items = try Self.list(value, at: Self.join(path, key), limit: 1_000)
        guard items.count == count else {
            throw ChartSpecError(
                path: Self.join(path, key), message: "must hold one entry per category (\(count)), not \(items.count)")
        }
        return try Self.each(items, at: Self.join(path, key)) { item, itemPath throws(ChartSpecError) -> Double? in
            switch item {
            case .null: return nil
            case .number(let number) where number.isFinite: return number
            default: throw ChartSpecError(path: itemPath, message: "must be a number or null, not \(item.typeName)")
            }
        }
    }

    static func join(_ path: String, _ key: String) -> String {
        path.isEmpty ? key : "\(path).\(key)"
    }
}
