import Yams

/// The parsed shape of a config document before it is checked: what YAML and JSON have in
/// common, with mapping keys kept in document order (so problems are reported in the order a
/// person reads the file) and duplicates kept (so they can be reported rather than silently
/// collapsed).
indirect enum ConfigNode: Sendable, Hashable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case sequence([ConfigNode])
    case mapping([Entry])

    struct Entry: Sendable, Hashable {
        var key: String
        var value: ConfigNode
    }

    /// How a value's kind reads in an error message: "must be a number, not a string".
    var kindDescription: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .sequence: "a list"
        case .mapping: "a mapping"
        }
    }

    /// A short rendering of a scalar for messages (`"two"`, `2.5`, `true`); nil for collections.
    var scalarText: String? {
        switch self {
        case .null: "null"
        case .bool(let value): String(value)
        case .number(let value): JSONValue.number(value).jsonString()
        case .string(let value): JSONValue.string(value).jsonString()
        case .sequence, .mapping: nil
        }
    }

    /// The same value as JSON (for `user_config`); a duplicated key keeps its last value, as
    /// JSON parsers commonly do.
    var jsonValue: JSONValue {
        switch self {
        case .null: .null
        case .bool(let value): .bool(value)
        case .number(let value): .number(value)
        case .string(let value): .string(value)
        case .sequence(let items): .array(items.map(\.jsonValue))
        case .mapping(let entries):
            .object(Dictionary(entries.map { ($0.key, $0.value.jsonValue) }, uniquingKeysWith: { _, last in last }))
        }
    }
}

// MARK: - From YAML

extension ConfigNode {
    /// Deeper nesting than this is refused rather than risking the stack on hostile input; no
    /// real config comes close.
    static let maximumDepth = 128

    struct YAMLFailure: Error {
        var message: String
    }

    /// Parses one YAML document (JSON is accepted too, being nearly a subset). Returns nil for a
    /// document with no content.
    static func parseYAML(_ text: String) throws(YAMLFailure) -> ConfigNode? {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw YAMLFailure(message: Self.describe(error))
        } catch {
            throw YAMLFailure(message: "not valid YAML: \(error)")
        }
        guard let root else { return nil }
        return try Self(yaml: root, depth: 0)
    }

    private init(yaml node: Node, depth: Int) throws(YAMLFailure) {
        guard depth < Self.maximumDepth else {
            throw YAMLFailure(message: "nested more than \(Self.maximumDepth) levels deep")
        }
        switch node {
        case .scalar(let scalar):
            self = Self.scalar(scalar, tag: Tag.Name(rawValue: node.tag.rawValue))
        case .sequence(let sequence):
            var items: [ConfigNode] = []
            for item in sequence {
                items.append(try ConfigNode(yaml: item, depth: depth + 1))
            }
            self = .sequence(items)
        case .mapping(let mapping):
            var entries: [Entry] = []
            for (key, value) in mapping {
                let keyText = key.scalar?.string ?? "\(key)"
                entries.append(Entry(key: keyText, value: try ConfigNode(yaml: value, depth: depth + 1)))
            }
            self = .mapping(entries)
        case .alias:
            throw YAMLFailure(message: "YAML aliases are not supported in a config")
        }
    }

    /// Turns a scalar into a value by its resolved tag (YAML 1.1 core schema, as Yams resolves
    /// it): quoted scalars are strings, `2` an integer, `0.5` a float, `true` a boolean.
    private static func scalar(_ scalar: Node.Scalar, tag: Tag.Name) -> ConfigNode {
        switch tag {
        case .null:
            return .null
        case .bool:
            if let value = Bool.construct(from: scalar) { return .bool(value) }
        case .int:
            if let value = Int64.construct(from: scalar) { return .number(Double(value)) }
            if let value = Double.construct(from: scalar) { return .number(value) }
        case .float:
            if let value = Double.construct(from: scalar) { return .number(value) }
        default:
            break
        }
        return .string(scalar.string)
    }

    private static func describe(_ error: YamlError) -> String {
        func at(_ mark: Mark) -> String { "line \(mark.line), column \(mark.column)" }
        switch error {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let detail = context.map { " (\($0.text))" } ?? ""
            return "not valid YAML at \(at(mark)): \(problem)\(detail)"
        case .duplicatedKeysInMapping(let duplicates, let context):
            let names = duplicates.map { "`\($0)`" }.joined(separator: ", ")
            return "duplicate key \(names) at \(at(context.mark)); each key may appear once per mapping"
        case .reader(let problem, _, _, _):
            return "not valid YAML: \(problem)"
        default:
            return "not valid YAML: \(error)"
        }
    }
}
