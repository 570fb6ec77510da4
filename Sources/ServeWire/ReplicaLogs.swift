import Foundation
import HTTPTypes
import NIOCore

/// How a process replica's output travels to `serve logs`: the head asks the replica's worker
/// `GET /-/logs/REPLICA?offset=N` on its data plane (with the cluster token) and passes the
/// answer on from `GET /api/serve/replicas/REPLICA/logs?offset=N`. Each answer is at most
/// `maxChunk` bytes, starting at `serve-log-offset` (0 again when the file was rotated below the
/// offset asked for); the next read starts at `serve-log-next`.
public enum ReplicaLogs {
    public static let workerPath = "/-/logs/"
    public static let offsetField = HTTPField.Name("serve-log-offset")!
    public static let nextField = HTTPField.Name("serve-log-next")!
    public static let maxChunk = 1 << 20

    /// The worker's path for `replicaID` from byte `offset`.
    public static func workerPath(replica replicaID: String, offset: Int) -> String {
        "\(Self.workerPath)\(Self.escape(replicaID))?offset=\(offset)"
    }

    /// `replicaID` as one path segment (`#` and anything else not plain escaped).
    public static func escape(_ replicaID: String) -> String {
        replicaID.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? replicaID
    }

    /// The replica and offset of a `/-/logs/REPLICA?offset=N` path (or of the head's
    /// `.../REPLICA/logs?offset=N` once its prefix is cut); nil when it is malformed.
    public static func parseWorkerPath(_ path: String) -> (replica: String, offset: Int)? {
        guard path.hasPrefix(Self.workerPath) else { return nil }
        return Self.parse(segment: path.dropFirst(Self.workerPath.count))
    }

    /// `REPLICA[?offset=N]` → the replica id (unescaped) and the offset (0 when absent).
    public static func parse(segment: Substring) -> (replica: String, offset: Int)? {
        let name = segment.prefix(while: { $0 != "?" })
        let query = segment.dropFirst(name.count + 1)
        guard let replica = String(name).removingPercentEncoding, !replica.isEmpty, !replica.contains("/") else { return nil }
        var offset = 0
        for pair in query.split(separator: "&") where pair.hasPrefix("offset=") {
            guard let value = Int(pair.dropFirst("offset=".count)), value >= 0 else { return nil }
            offset = value
        }
        return (replica, offset)
    }

    /// Up to `maxChunk` bytes of the file at `url` from `offset` (from 0 when the file is now
    /// shorter than `offset`: it was rotated).
    public static func read(_ url: URL, from offset: Int) throws -> (bytes: ByteBuffer, start: Int, next: Int) {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        let size = Int(try handle.seekToEnd())
        let start = offset <= size ? offset : 0
        try handle.seek(toOffset: UInt64(start))
        let data = try handle.read(upToCount: min(Self.maxChunk, size - start)) ?? Data()
        return (ByteBuffer(bytes: data), start, start + data.count)
    }
}
