import Foundation
import ServeProto
import ServeProxy
import SwiftProtobuf

/// A `HeadMessage` as the simulator reads it: every kind decoded as the generated
/// `PBHeadMessage` would be, except the route table, kept as its bytes. A thousand simulated
/// proxies on one machine decoding every table is the simulator's cost, not the head's (a real
/// node decodes only its own, on its own CPU); with `--tables version` a node reads only the
/// table's header (`RouteHeader`), so that a benchmark at scale measures the head.
struct HeadEnvelope: SwiftProtobuf.Message, SwiftProtobuf._MessageImplementationBase {
    static let protoMessageName = "serve.v1.HeadMessage"

    var sequence: UInt64 = 0
    var inReplyTo: UInt64 = 0
    /// Every kind but `.routes`.
    var kind: PBHeadMessage.OneOf_Kind?
    /// A `RouteTableUpdate`, as it came.
    var routes: Data?
    var unknownFields = SwiftProtobuf.UnknownStorage()

    init() {}

    /// The field numbers of `HeadMessage` (control.proto).
    mutating func decodeMessage<D: SwiftProtobuf.Decoder>(decoder: inout D) throws {
        while let field = try decoder.nextFieldNumber() {
            switch field {
            case 1: try decoder.decodeSingularUInt64Field(value: &self.sequence)
            case 2: try decoder.decodeSingularUInt64Field(value: &self.inReplyTo)
            case 10: self.kind = try Self.decode(PBRegisterAnswer.self, &decoder).map { .registerAnswer($0) } ?? self.kind
            case 11: self.kind = try Self.decode(PBStartReplica.self, &decoder).map { .startReplica($0) } ?? self.kind
            case 12: self.kind = try Self.decode(PBStopReplica.self, &decoder).map { .stopReplica($0) } ?? self.kind
            case 13: self.kind = try Self.decode(PBReconfigureReplica.self, &decoder).map { .reconfigureReplica($0) } ?? self.kind
            case 15: self.kind = try Self.decode(PBPing.self, &decoder).map { .ping($0) } ?? self.kind
            case 16:
                var bytes = Data()
                try decoder.decodeSingularBytesField(value: &bytes)
                self.routes = bytes
            default: break
            }
        }
    }

    private static func decode<M: SwiftProtobuf.Message, D: SwiftProtobuf.Decoder>(_ type: M.Type, _ decoder: inout D) throws -> M? {
        var value: M?
        try decoder.decodeSingularMessageField(value: &value)
        return value
    }

    /// Only what identifies it (the simulator never sends one).
    func traverse<V: SwiftProtobuf.Visitor>(visitor: inout V) throws {
        if self.sequence != 0 { try visitor.visitSingularUInt64Field(value: self.sequence, fieldNumber: 1) }
        if self.inReplyTo != 0 { try visitor.visitSingularUInt64Field(value: self.inReplyTo, fieldNumber: 2) }
        if let routes = self.routes { try visitor.visitSingularBytesField(value: routes, fieldNumber: 16) }
        try self.unknownFields.traverse(visitor: &visitor)
    }

    static func == (lhs: HeadEnvelope, rhs: HeadEnvelope) -> Bool {
        lhs.sequence == rhs.sequence && lhs.inReplyTo == rhs.inReplyTo && lhs.kind == rhs.kind && lhs.routes == rhs.routes
            && lhs.unknownFields == rhs.unknownFields
    }
}

/// The header of a `RouteTableUpdate` (routes.proto: `epoch` 1, `sequence` 2, `base_sequence`
/// 9, `made_at_unix_ms` 11), its applications skipped unread.
struct RouteHeader: SwiftProtobuf.Message, SwiftProtobuf._MessageImplementationBase {
    static let protoMessageName = "serve.v1.RouteTableUpdate"

    var epoch: UInt64 = 0
    var sequence: UInt64 = 0
    var baseSequence: UInt64 = 0
    var madeAtUnixMs: Int64 = 0
    var unknownFields = SwiftProtobuf.UnknownStorage()

    init() {}

    static func read(_ bytes: Data) throws -> RouteHeader {
        var options = BinaryDecodingOptions()
        options.discardUnknownFields = true
        return try RouteHeader(serializedBytes: bytes, options: options)
    }

    mutating func decodeMessage<D: SwiftProtobuf.Decoder>(decoder: inout D) throws {
        while let field = try decoder.nextFieldNumber() {
            switch field {
            case 1: try decoder.decodeSingularUInt64Field(value: &self.epoch)
            case 2: try decoder.decodeSingularUInt64Field(value: &self.sequence)
            case 9: try decoder.decodeSingularUInt64Field(value: &self.baseSequence)
            case 11: try decoder.decodeSingularInt64Field(value: &self.madeAtUnixMs)
            default: break
            }
        }
    }

    func traverse<V: SwiftProtobuf.Visitor>(visitor: inout V) throws {
        if self.epoch != 0 { try visitor.visitSingularUInt64Field(value: self.epoch, fieldNumber: 1) }
        if self.sequence != 0 { try visitor.visitSingularUInt64Field(value: self.sequence, fieldNumber: 2) }
        if self.baseSequence != 0 { try visitor.visitSingularUInt64Field(value: self.baseSequence, fieldNumber: 9) }
        if self.madeAtUnixMs != 0 { try visitor.visitSingularInt64Field(value: self.madeAtUnixMs, fieldNumber: 11) }
        try self.unknownFields.traverse(visitor: &visitor)
    }

    static func == (lhs: RouteHeader, rhs: RouteHeader) -> Bool {
        lhs.epoch == rhs.epoch && lhs.sequence == rhs.sequence && lhs.baseSequence == rhs.baseSequence
            && lhs.madeAtUnixMs == rhs.madeAtUnixMs && lhs.unknownFields == rhs.unknownFields
    }
}

/// How a simulated proxy takes the head's route tables (`--tables`).
enum TableMode: String, Sendable, CaseIterable {
    /// Decoded and applied as a node's proxy applies them (`RouteTableMirror`).
    case full
    /// Only the header read (`RouteHeader`), its version kept: the simulator's CPU stays off
    /// the measurement when a thousand nodes each get tables of thousands of replicas.
    case version
}

/// The route table a simulated node's proxy holds: whole (`TableMode.full`) or its version only.
struct SimTable: Sendable {
    var mirror = RouteTableMirror()
    private var versionOnly: TableVersion?

    var version: TableVersion? { self.versionOnly ?? self.mirror.version }

    /// Takes a table as it came on the control stream, as a worker does (`WorkerNode`): nil when
    /// it is not newer than the one held; throws (`RouteTableMirror.MissingBase`, or
    /// `MissingBase` for a version only) for a change from a table not held (the node's stream ends and it registers again for the whole table).
    /// Also says how many replicas the table lists (0 when not decoded) and when it was made.
    mutating func receive(_ bytes: Data, mode: TableMode) throws -> (version: TableVersion, replicas: Int, madeAtUnixMs: Int64)? {
        switch mode {
        case .full:
            let update = try PBRouteTableUpdate(serializedBytes: bytes)
            guard try self.mirror.apply(update), let version = self.mirror.version else { return nil }
            let replicas = self.mirror.table.applications.reduce(0) { sum, app in sum + app.deployments.reduce(0) { $0 + $1.replicas.count } }
            return (version, replicas, update.madeAtUnixMs)
        case .version:
            let header = try RouteHeader.read(bytes)
            let version = TableVersion(epoch: header.epoch, sequence: header.sequence)
            if let held = self.versionOnly, version <= held { return nil }
            if header.baseSequence != 0 {
                let base = TableVersion(epoch: header.epoch, sequence: header.baseSequence)
                guard base == self.versionOnly else { throw MissingBase(held: self.versionOnly, base: base) }
            }
            self.versionOnly = version
            return (version, 0, header.madeAtUnixMs)
        }
    }
}

/// A change from a table this node does not hold (`TableMode.version`).
struct MissingBase: Error, CustomStringConvertible {
    var held: TableVersion?
    var base: TableVersion
    var description: String { "a route table change from \(self.base) arrived, but this node holds \(self.held.map { "\($0)" } ?? "no table")" }
}
