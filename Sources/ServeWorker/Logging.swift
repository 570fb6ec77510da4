import ArgumentParser
import Foundation
import Logging
import ServeCore

/// `--log-level` and `--log-format` of every long-running binary (serve-head, serve-worker,
/// serve run), with `SERVE_LOG_LEVEL` and `SERVE_LOG_FORMAT` as their defaults. Lines go to
/// standard error: `text` as swift-log's stream handler writes them (metadata as key=value), or
/// `json`, one object per line with `time`, `level`, `label`, `message`, `source` and every
/// metadata key (`serve.node`, `serve.replica`, `serve.deployment`, ...) as a field.
public struct LoggingOptions: ParsableArguments {
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default: SERVE_LOG_LEVEL, else info).")
    var level: String?
    @Option(name: .customLong("log-format"), help: "text or json (default: SERVE_LOG_FORMAT, else text).")
    var format: String?

    public init() {}

    public enum Format: String, CaseIterable, Sendable {
        case text, json
    }

    /// The level and format asked for, by flag, else environment, else info and text.
    public func resolved(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> (Logger.Level, Format) {
        let levelText = (self.level ?? environment["SERVE_LOG_LEVEL"] ?? "info").lowercased()
        guard let level = Logger.Level(rawValue: levelText) else {
            let known = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
            throw ValidationError("--log-level (or SERVE_LOG_LEVEL) must be one of \(known), not \"\(levelText)\"")
        }
        let formatText = (self.format ?? environment["SERVE_LOG_FORMAT"] ?? "text").lowercased()
        guard let format = Format(rawValue: formatText) else {
            throw ValidationError("--log-format (or SERVE_LOG_FORMAT) must be text or json, not \"\(formatText)\"")
        }
        return (level, format)
    }

    /// Sets up the process's logging once, before anything logs.
    public func bootstrap() throws {
        let (level, format) = try self.resolved()
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler
            switch format {
            case .text: handler = StreamLogHandler.standardError(label: label)
            case .json: handler = JSONLogHandler(label: label)
            }
            handler.logLevel = level
            return handler
        }
    }
}

/// One JSON object per line on standard error, for log shippers.
public struct JSONLogHandler: LogHandler {
    public let label: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    public init(label: String) {
        self.label = label
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        FileHandle.standardError.write(Data((Self.line(event, label: self.label, metadata: self.merged(event.metadata)) + "\n").utf8))
    }

    private func merged(_ extra: Logger.Metadata?) -> Logger.Metadata {
        var all = self.metadata
        if let provided = self.metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra { all.merge(extra) { _, new in new } }
        return all
    }

    static func line(_ event: LogEvent, label: String, metadata: Logger.Metadata, now: Date = Date()) -> String {
        var object: [String: JSONValue] = [
            "time": .string(now.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))),
            "level": .string(event.level.rawValue),
            "label": .string(label),
            "message": .string(event.message.description),
            "source": .string(event.source),
        ]
        for (key, value) in metadata where object[key] == nil { object[key] = Self.json(value) }
        return JSONValue.object(object).jsonString()
    }

    private static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let text): .string(text)
        case .stringConvertible(let value): .string(value.description)
        case .array(let values): .array(values.map(Self.json))
        case .dictionary(let values): .object(values.mapValues(Self.json))
        }
    }
}
