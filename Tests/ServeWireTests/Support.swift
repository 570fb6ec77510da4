import Foundation
import HTTPTypes
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

/// The package root, from this file's path (Tests/ServeWireTests/Support.swift).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A binary of this package, built by `swift build` (the Makefile builds before testing).
func builtBinary(_ name: String) throws -> URL {
    for configuration in ["debug", "release"] {
        let url = packageRoot.appendingPathComponent(".build/\(configuration)/\(name)")
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw TestFailure("\(name) is not built; run `swift build` (make test does) first")
}

/// A system tool the tests talk to (nghttp2's tools), installed by `make test`.
func systemTool(_ name: String) throws -> URL {
    for directory in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let url = URL(fileURLWithPath: directory).appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw TestFailure("\(name) is not installed; `make test` installs it (apt-get install nghttp2-client nghttp2-server)")
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A child process whose output is kept, and printed if a test fails.
final class ChildProcess: @unchecked Sendable {
    let process = Process()
    let outputURL: URL

    init(_ executable: URL, _ arguments: [String]) throws {
        self.outputURL = FileManager.default.temporaryDirectory.appendingPathComponent("serve-test-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: self.outputURL.path, contents: nil)
        let handle = try FileHandle(forWritingTo: self.outputURL)
        self.process.executableURL = executable
        self.process.arguments = arguments
        self.process.standardOutput = handle
        self.process.standardError = handle
        try self.process.run()
    }

    var output: String { (try? Data(contentsOf: self.outputURL)).map { String(decoding: $0, as: UTF8.self) } ?? "" }

    /// Waits until the output contains `text`, or fails after `timeout` seconds (printing it).
    func waitForOutput(containing text: String, timeout: Double = 20) async throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let output = self.output
            if output.contains(text) { return output }
            if !self.process.isRunning { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestFailure("\(self.process.executableURL!.lastPathComponent) did not print '\(text)'; its output:\n\(self.output)")
    }

    func kill(signal: Int32 = SIGKILL) {
        if self.process.isRunning { Foundation.kill(self.process.processIdentifier, signal) }
        self.process.waitUntilExit()
    }

    deinit {
        if self.process.isRunning {
            Foundation.kill(self.process.processIdentifier, SIGKILL)
            self.process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: self.outputURL)
    }
}

/// Runs a command to completion and returns its exit status and output.
func run(_ executable: URL, _ arguments: [String], timeout: Double = 60) async throws -> (status: Int32, output: String) {
    let child = try ChildProcess(executable, arguments)
    let deadline = Date().addingTimeInterval(timeout)
    while child.process.isRunning {
        if Date() > deadline {
            child.kill()
            throw TestFailure("\(executable.lastPathComponent) \(arguments) ran past \(timeout) s; output:\n\(child.output)")
        }
        try await Task.sleep(for: .milliseconds(10))
    }
    return (child.process.terminationStatus, child.output)
}

/// Resident memory of this process, and its peak since the last `resetPeakMemory()`.
enum ProcessMemory {
    static func field(_ name: String) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix(name + ":") {
            let digits = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0"
            return (Int(digits) ?? 0) * 1024
        }
        return 0
    }

    static var resident: Int { field("VmRSS") }
    static var peak: Int { field("VmHWM") }

    /// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    static func resetPeak() {
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
    }
}

/// A server answering every request with its own body, streamed chunk by chunk, and with
/// the request's trailers; GET requests get their path back.
func startEchoServer(configuration: HTTP2Configuration = .init()) async throws -> HTTP2Server {
    try await HTTP2Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { request, writer in
        if request.head.method == .get {
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: request.head.path ?? "/"))
            return
        }
        try await writer.writeHead(HTTPResponse(status: .ok))
        for try await chunk in request.body {
            try await writer.write(chunk)
        }
        try await writer.finish(trailers: request.body.trailers)
    }
}

func request(_ method: HTTPRequest.Method, _ path: String, _ fields: HTTPFields = [:]) -> HTTPRequest {
    HTTPRequest(method: method, scheme: "http", authority: "127.0.0.1", path: path, headerFields: fields)
}

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) }
    }
}

/// A large body made by repeating a random block whose length is prime, so any corruption,
/// reordering or loss of bytes in a stream shows up, checked with memcmp (fast even in debug
/// builds) without keeping the body.
struct RepeatingPattern: Sendable {
    static let period = 65_521
    let doubled: [UInt8]

    init(seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        let block = generator.bytes(Self.period)
        self.doubled = block + block
    }

    /// The chunk of the body starting at `offset`.
    func chunk(at offset: Int, length: Int) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(length)
        var written = 0
        while written < length {
            let start = (offset + written) % Self.period
            let take = min(length - written, Self.period)
            _ = self.doubled.withUnsafeBytes { bytes in
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + take)]))
            }
            written += take
        }
        return buffer
    }

    /// Checks a received chunk that starts at `offset` in the body.
    func matches(_ buffer: ByteBuffer, at offset: Int) -> Bool {
        buffer.withUnsafeReadableBytes { received in
            var checked = 0
            while checked < received.count {
                let start = (offset + checked) % Self.period
                let take = min(received.count - checked, Self.period)
                let equal = self.doubled.withUnsafeBytes { expected in
                    memcmp(received.baseAddress! + checked, expected.baseAddress! + start, take) == 0
                }
                if !equal { return false }
                checked += take
            }
            return true
        }
    }
}
