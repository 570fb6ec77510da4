import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

/// Every HTTP/1 test, one at a time: two of them measure the process's peak memory.
@Suite("HTTP/1.1", .serialized)
struct HTTP1Tests {}

/// The echo handler of the HTTP/1 tests, for any protocol: GET and HEAD get their path back,
/// other methods their body, streamed chunk by chunk.
@Sendable func echoHandler(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
    if request.head.method == .get || request.head.method == .head {
        try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: request.head.path ?? "/"))
        return
    }
    try await writer.writeHead(HTTPResponse(status: .ok, headerFields: [.contentType: "application/octet-stream"]))
    for try await chunk in request.body {
        try await writer.write(chunk)
    }
    try await writer.finish()
}

func startHTTP1EchoServer(configuration: HTTP1Configuration = .init()) async throws -> HTTP1Server {
    try await HTTP1Server.bind(host: "127.0.0.1", port: 0, configuration: configuration) { request, writer in
        try await echoHandler(request, writer)
    }
}

/// A request body produced on demand from a `RepeatingPattern`, counting what was taken.
struct PatternUpload: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let pattern: RepeatingPattern
    let total: Int
    var chunkSize = 64 << 10
    var produced: NIOLockedValueBox<Int>? = nil

    struct AsyncIterator: AsyncIteratorProtocol {
        let upload: PatternUpload
        var offset = 0

        mutating func next() async throws -> ByteBuffer? {
            guard self.offset < self.upload.total else { return nil }
            let length = Swift.min(self.upload.chunkSize, self.upload.total - self.offset)
            let chunk = self.upload.pattern.chunk(at: self.offset, length: length)
            self.offset += length
            self.upload.produced?.withLockedValue { $0 += length }
            return chunk
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(upload: self) }
}

/// Reads a body to its end, checking it against `pattern`; returns its length and whether it
/// matched.
func checkPattern(_ body: HTTPBody, _ pattern: RepeatingPattern) async throws -> (count: Int, intact: Bool) {
    var received = 0
    var intact = true
    for try await chunk in body {
        if intact && !pattern.matches(chunk, at: received) { intact = false }
        received += chunk.readableBytes
    }
    return (received, intact)
}

/// Writes `total` bytes of `pattern` to a new temporary file.
func writePatternFile(_ pattern: RepeatingPattern, total: Int) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("serve-http1-\(UUID().uuidString).bin")
    _ = FileManager.default.createFile(atPath: url.path, contents: nil)
    let handle = try FileHandle(forWritingTo: url)
    defer { try? handle.close() }
    var offset = 0
    while offset < total {
        let length = min(1 << 20, total - offset)
        var chunk = pattern.chunk(at: offset, length: length)
        try handle.write(contentsOf: chunk.readBytes(length: length)!)
        offset += length
    }
    return url
}

/// Checks a file against `pattern`, a MiB at a time.
func fileMatchesPattern(_ url: URL, _ pattern: RepeatingPattern) throws -> (count: Int, intact: Bool) {
    let handle = try FileHandle(forReadingFrom: url)
    defer { try? handle.close() }
    var offset = 0
    var intact = true
    while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty {
        if intact && !pattern.matches(ByteBuffer(bytes: data), at: offset) { intact = false }
        offset += data.count
    }
    return (offset, intact)
}

func temporaryPath(_ name: String) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("serve-http1-\(UUID().uuidString)-\(name)")
}

/// A bare TCP connection for speaking raw HTTP/1.1 bytes at a server and reading exactly what
/// comes back.
final class RawConnection: Sendable {
    let channel: any Channel
    let received: NIOLockedValueBox<[UInt8]>

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<[UInt8]>
        init(_ received: NIOLockedValueBox<[UInt8]>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = Self.unwrapInboundIn(data)
            self.received.withLockedValue { $0.append(contentsOf: buffer.readableBytesView) }
        }
    }

    private init(channel: any Channel, received: NIOLockedValueBox<[UInt8]>) {
        self.channel = channel
        self.received = received
    }

    static func connect(port: Int) async throws -> RawConnection {
        let received = NIOLockedValueBox<[UInt8]>([])
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(received)) }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return RawConnection(channel: channel, received: received)
    }

    func send(_ text: String) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(string: text))
    }

    var text: String { String(decoding: self.received.withLockedValue { $0 }, as: UTF8.self) }

    /// Takes what has arrived so far, leaving nothing.
    func take() -> String {
        String(
            decoding: self.received.withLockedValue { bytes in
                defer { bytes.removeAll() }
                return bytes
            }, as: UTF8.self)
    }

    /// Waits until what has arrived satisfies `done`, or fails after `timeout` seconds.
    func wait(timeout: Double = 5, until done: (String) -> Bool) async throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let text = self.text
            if done(text) { return text }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw TestFailure("no matching answer within \(timeout) s; received:\n\(self.text)")
    }

    /// Waits until at least `count` bytes have arrived.
    func wait(bytes count: Int, timeout: Double = 5) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while self.received.withLockedValue({ $0.count }) < count {
            if Date() > deadline { throw TestFailure("fewer than \(count) bytes arrived within \(timeout) s") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits until the server closes the connection.
    func waitForClose(timeout: Double = 5) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while self.channel.isActive {
            if Date() > deadline { throw TestFailure("the server did not close the connection; received:\n\(self.text)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    func close() async {
        try? await self.channel.close()
    }
}

/// `curl`, an independent HTTP/1.1 and h2c client.
func curl(_ arguments: [String], timeout: Double = 60) async throws -> (status: Int32, output: String) {
    try await run(try systemTool("curl"), ["--silent", "--show-error"] + arguments, timeout: timeout)
}

/// Distinct values, in a thread-safe box (the remote ports a server saw, say).
final class Recorder<Value: Hashable & Sendable>: Sendable {
    private let values = NIOLockedValueBox<[Value]>([])
    func record(_ value: Value) { self.values.withLockedValue { $0.append(value) } }
    var all: [Value] { self.values.withLockedValue { $0 } }
    var distinct: Set<Value> { Set(self.all) }
}
