import Foundation
import Testing

@testable import ServeWorker

/// A process replica's output file stays bounded (issue 13, item 7).
@Suite("Process replica logs")
struct LogRotationTests {
    @Test("past its limit a log is copied to NAME.1 and truncated, and a child appending to it writes at the new start; tail reads only the end")
    func rotation() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("serve-logs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("R.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        // The child's side: a descriptor opened with O_APPEND, as the spawn opens it.
        let child = open(log.path, O_WRONLY | O_APPEND)
        #expect(child >= 0)
        defer { close(child) }
        let line = Array(String(repeating: "x", count: 99).utf8) + [10]
        for _ in 0..<200 { _ = line.withUnsafeBytes { write(child, $0.baseAddress, $0.count) } }
        #expect(!ProcessReplica.rotateLog(log, limit: 1 << 20), "under the limit: left alone")
        #expect(ProcessReplica.rotateLog(log, limit: 10_000))
        let kept = try Data(contentsOf: directory.appendingPathComponent("R.log.1"))
        #expect(kept.count == 20_000)
        #expect(try Data(contentsOf: log).isEmpty)
        let last = Array("the last line".utf8) + [10]
        _ = last.withUnsafeBytes { write(child, $0.baseAddress, $0.count) }
        #expect(try Data(contentsOf: log).count == last.count, "the child's next write lands at the start")
        #expect(ProcessReplica.tail(of: log, lines: 1).hasPrefix("the last line"))
    }
}
