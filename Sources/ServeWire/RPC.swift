import HTTPTypes
import NIOCore
import SwiftProtobuf

/// A small RPC layer on ServeWire's HTTP/2: protobuf messages in length-prefixed frames, the
/// framing gRPC uses (1 flag byte, 4-byte big-endian length, message; see gRPC's
/// PROTOCOL-HTTP2.md), on `POST /<service>/<method>` streams, with the call's outcome in
/// trailers (`serve-status`, `serve-message`) and its deadline in `serve-timeout-ms`.
///
/// Not gRPC itself: no gRPC peer is needed on the control plane, so the header names are ours
/// and the content type says so. Unary and bidirectional-streaming calls are supported.
public enum RPC {
    public static let contentType = "application/x-serve-rpc+proto"
    /// The largest message accepted, unless a call says otherwise.
    public static let defaultMaxMessageSize = 16 << 20

    static let statusField = HTTPField.Name("serve-status")!
    static let messageField = HTTPField.Name("serve-message")!
    static let timeoutField = HTTPField.Name("serve-timeout-ms")!
}

/// How an RPC ended, when it did not succeed. Codes follow gRPC's status codes, which every
/// RPC user already knows.
public struct RPCError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: Int, Sendable, Hashable {
        case cancelled = 1
        case unknown = 2
        case invalidArgument = 3
        case deadlineExceeded = 4
        case notFound = 5
        case alreadyExists = 6
        case permissionDenied = 7
        case resourceExhausted = 8
        case failedPrecondition = 9
        case aborted = 10
        case unimplemented = 12
        case `internal` = 13
        case unavailable = 14
        case unauthenticated = 16
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "RPC failed (\(self.code)): \(self.message)" }

    /// What a wire-level failure means to an RPC caller.
    init(_ error: HTTP2Error) {
        switch error {
        case .timeout: self.init(.deadlineExceeded, error.description)
        case .refused, .goAway, .connectionClosed, .connectFailed: self.init(.unavailable, error.description)
        case .streamReset(let code) where code == HTTP2ErrorCode.cancel: self.init(.cancelled, error.description)
        case .streamReset(let code) where code == HTTP2ErrorCode.refusedStream: self.init(.unavailable, error.description)
        case .bodyTooLarge: self.init(.resourceExhausted, error.description)
        default: self.init(.internal, error.description)
        }
    }

    static func from(_ error: any Error) -> RPCError {
        if let error = error as? RPCError { return error }
        if let error = error as? HTTP2Error { return RPCError(error) }
        if error is CancellationError { return RPCError(.cancelled, "the call was cancelled") }
        return RPCError(.unknown, "\(error)")
    }

    /// Trailers carrying this outcome (message percent-encoded: header values are ASCII).
    var trailers: HTTPFields {
        var fields = HTTPFields()
        fields[RPC.statusField] = String(self.code.rawValue)
        fields[RPC.messageField] = Self.percentEncode(self.message)
        return fields
    }

    static func okTrailers() -> HTTPFields { [RPC.statusField: "0"] }

    /// Reads an outcome from trailers: nil for success.
    static func fromTrailers(_ trailers: HTTPFields?) -> RPCError? {
        guard let status = trailers?[RPC.statusField], let raw = Int(status) else {
            return RPCError(.internal, "the call ended without a status")
        }
        if raw == 0 { return nil }
        let message = trailers?[RPC.messageField].flatMap { $0.removingPercentEncoding } ?? ""
        return RPCError(Code(rawValue: raw) ?? .unknown, message)
    }

    static func percentEncode(_ string: String) -> String {
        var out = ""
        for byte in string.utf8 {
            if byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "%") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

extension String {
    fileprivate func leftPadded(to length: Int) -> String {
        String(repeating: "0", count: max(0, length - self.count)) + self
    }

    fileprivate var removingPercentEncoding: String? {
        var bytes: [UInt8] = []
        var iterator = self.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                    let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Splits a byte stream into length-prefixed messages, however the bytes were chunked.
public struct RPCMessageDecoder: Sendable {
    private var buffer = ByteBuffer()
    public let maxMessageSize: Int

    public init(maxMessageSize: Int = RPC.defaultMaxMessageSize) {
        self.maxMessageSize = maxMessageSize
    }

    public mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        if self.buffer.readableBytes == 0 {
            self.buffer = bytes
        } else {
            self.buffer.writeBuffer(&bytes)
        }
    }

    /// The next whole message, or nil until more bytes arrive.
    public mutating func next() throws -> ByteBuffer? {
        guard self.buffer.readableBytes >= 5 else { return nil }
        let start = self.buffer.readerIndex
        let flags = self.buffer.getInteger(at: start, as: UInt8.self)!
        let length = Int(self.buffer.getInteger(at: start + 1, as: UInt32.self)!)
        guard flags == 0 else {
            throw RPCError(.unimplemented, "compressed RPC messages are not supported (flag \(flags)); compress the HTTP/2 body instead")
        }
        guard length <= self.maxMessageSize else {
            throw RPCError(.resourceExhausted, "a message of \(length) bytes is over the \(self.maxMessageSize)-byte limit")
        }
        guard self.buffer.readableBytes >= 5 + length else { return nil }
        self.buffer.moveReaderIndex(forwardBy: 5)
        let message = self.buffer.readSlice(length: length)!
        if self.buffer.readableBytes == 0 { self.buffer.clear() }
        return message
    }

    /// Called at the end of the stream: leftover bytes mean a message was cut short.
    public func finish() throws {
        if self.buffer.readableBytes > 0 {
            throw RPCError(.internal, "the stream ended inside a message (\(self.buffer.readableBytes) bytes left over)")
        }
    }

    /// Frames one message.
    public static func frame(_ message: some SwiftProtobuf.Message, into buffer: inout ByteBuffer) throws {
        let bytes: [UInt8] = try message.serializedBytes()
        buffer.reserveCapacity(minimumWritableBytes: 5 + bytes.count)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(bytes.count))
        buffer.writeBytes(bytes)
    }

    static func frame(_ message: some SwiftProtobuf.Message) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try self.frame(message, into: &buffer)
        return buffer
    }
}

/// The messages of one direction of a call, decoded as they arrive.
public struct RPCInbound<Message: SwiftProtobuf.Message & Sendable>: AsyncSequence, Sendable {
    public typealias Element = Message
    let body: HTTPBody
    let maxMessageSize: Int
    /// Client side: the call's outcome is read from the trailers at the end.
    let checkTrailers: Bool

    public struct AsyncIterator: AsyncIteratorProtocol {
        var body: HTTPBody.AsyncIterator
        let trailersOf: HTTPBody
        var decoder: RPCMessageDecoder
        let checkTrailers: Bool
        var done = false

        public mutating func next() async throws -> Message? {
            while !self.done {
                if let bytes = try self.decoder.next() {
                    do {
                        return try Message(serializedBytes: Array(bytes.readableBytesView))
                    } catch {
                        throw RPCError(.internal, "a \(Message.protoMessageName) could not be decoded: \(error)")
                    }
                }
                let chunk: ByteBuffer?
                do { chunk = try await self.body.next() } catch { throw RPCError.from(error) }
                guard let chunk else {
                    self.done = true
                    try self.decoder.finish()
                    if self.checkTrailers, let failure = RPCError.fromTrailers(self.trailersOf.trailers) { throw failure }
                    return nil
                }
                self.decoder.append(chunk)
            }
            return nil
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(
            body: self.body.makeAsyncIterator(),
            trailersOf: self.body,
            decoder: RPCMessageDecoder(maxMessageSize: self.maxMessageSize),
            checkTrailers: self.checkTrailers
        )
    }
}

/// Sends messages on one direction of a call.
public struct RPCOutbound<Message: SwiftProtobuf.Message & Sendable>: Sendable {
    let write: @Sendable (ByteBuffer) async throws -> Void

    public func send(_ message: Message) async throws {
        try await self.send(RPCFrame(message))
    }

    public func send(_ frame: RPCFrame<Message>) async throws {
        do { try await self.write(frame.bytes) } catch { throw RPCError.from(error) }
    }
}

/// One message serialized and framed for an RPC stream, once: the same frame can be sent on any
/// number of streams (a message for every node costs one serialization, not one per node).
public struct RPCFrame<Message: SwiftProtobuf.Message & Sendable>: Sendable {
    let bytes: ByteBuffer

    public init(_ message: Message) throws {
        self.bytes = try RPCMessageDecoder.frame(message)
    }

    /// The frame's size in bytes (its 5-byte prefix included).
    public var count: Int { self.bytes.readableBytes }
}

/// What a server handler knows about its call.
public struct RPCContext: Sendable {
    /// The request's headers (metadata such as `authorization`).
    public var headers: HTTPFields
    /// When the caller stops waiting, if it said.
    public var deadline: ContinuousClock.Instant?
    public var remoteAddress: SocketAddress?
}

/// Routes RPC paths to handlers; mount it in an `HTTP2Server` handler with `handle`.
public struct RPCRouter: Sendable {
    typealias Route = @Sendable (HTTPServerRequest, HTTP2ResponseWriter, RPCContext) async throws -> Void
    private var routes: [String: Route] = [:]
    public var maxMessageSize: Int

    public init(maxMessageSize: Int = RPC.defaultMaxMessageSize) {
        self.maxMessageSize = maxMessageSize
    }

    /// One request message, one response message.
    public mutating func unary<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ path: String,
        _ handler: @escaping @Sendable (Request, RPCContext) async throws -> Response
    ) {
        let maxMessageSize = self.maxMessageSize
        self.routes[path] = { request, writer, context in
            let inbound = RPCInbound<Request>(body: request.body, maxMessageSize: maxMessageSize, checkTrailers: false)
            var outcome: RPCError?
            var body = ByteBuffer()
            do {
                var iterator = inbound.makeAsyncIterator()
                guard let message = try await iterator.next() else {
                    throw RPCError(.invalidArgument, "a unary call needs exactly one request message")
                }
                guard try await iterator.next() == nil else {
                    throw RPCError(.invalidArgument, "a unary call takes exactly one request message")
                }
                let response = try await Self.withDeadline(context.deadline) { try await handler(message, context) }
                try RPCMessageDecoder.frame(response, into: &body)
            } catch {
                outcome = RPCError.from(error)
                body.clear()
            }
            try await writer.respond(Self.responseHead, body: body, trailers: outcome?.trailers ?? RPCError.okTrailers())
        }
    }

    /// Messages both ways, interleaved, for as long as both sides keep the stream open.
    public mutating func bidirectional<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ path: String,
        _ handler: @escaping @Sendable (RPCInbound<Request>, RPCOutbound<Response>, RPCContext) async throws -> Void
    ) {
        let maxMessageSize = self.maxMessageSize
        self.routes[path] = { request, writer, context in
            try await writer.writeHead(Self.responseHead)
            let inbound = RPCInbound<Request>(body: request.body, maxMessageSize: maxMessageSize, checkTrailers: false)
            let outbound = RPCOutbound<Response>(write: { try await writer.write($0) })
            var outcome: RPCError?
            do {
                try await Self.withDeadline(context.deadline) { try await handler(inbound, outbound, context) }
            } catch {
                outcome = RPCError.from(error)
            }
            try await writer.finish(trailers: outcome?.trailers ?? RPCError.okTrailers())
        }
    }

    static var responseHead: HTTPResponse {
        HTTPResponse(status: .ok, headerFields: [.contentType: RPC.contentType])
    }

    /// Serves `request` if its path is an RPC route; returns false (having done nothing) if not.
    public func handle(_ request: HTTPServerRequest, _ writer: HTTP2ResponseWriter) async throws -> Bool {
        guard let path = request.head.path, let route = self.routes[path] else { return false }
        guard request.head.method == .post else {
            try await writer.respond(HTTPResponse(status: .methodNotAllowed), body: ByteBuffer(string: "RPCs are POST requests\n"))
            return true
        }
        let deadline = request.head.headerFields[RPC.timeoutField].flatMap(Int.init).map {
            ContinuousClock.now + .milliseconds($0)
        }
        let context = RPCContext(headers: request.head.headerFields, deadline: deadline, remoteAddress: request.remoteAddress)
        try await route(request, writer, context)
        return true
    }

    /// Answers an RPC path that has no route (so callers get `unimplemented`, not a 404).
    public static func unimplemented(_ request: HTTPServerRequest, _ writer: HTTP2ResponseWriter) async throws {
        let error = RPCError(.unimplemented, "no RPC method \(request.head.path ?? "?")")
        try await writer.respond(Self.responseHead, body: nil, trailers: error.trailers)
    }

    /// Runs `body`, cancelling it and failing with `deadlineExceeded` once `deadline` passes.
    static func withDeadline<T: Sendable>(
        _ deadline: ContinuousClock.Instant?,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        do {
            return try await ServeWire.withDeadline(deadline, body)
        } catch is DeadlineExceeded {
            throw RPCError(.deadlineExceeded, "the call's deadline passed")
        }
    }
}

/// Calls RPCs over one `HTTP2ClientConnection`.
public struct RPCClient: Sendable {
    public let connection: HTTP2ClientConnection
    /// Headers sent with every call (e.g. `authorization`).
    public var metadata: HTTPFields
    public var maxMessageSize: Int

    public init(connection: HTTP2ClientConnection, metadata: HTTPFields = [:], maxMessageSize: Int = RPC.defaultMaxMessageSize) {
        self.connection = connection
        self.metadata = metadata
        self.maxMessageSize = maxMessageSize
    }

    private func head(_ path: String, timeout: Duration?) -> HTTPRequest {
        var fields = self.metadata
        fields[.contentType] = RPC.contentType
        if let timeout {
            fields[RPC.timeoutField] = String(max(1, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
        }
        return HTTPRequest(method: .post, scheme: "http", authority: "serve", path: path, headerFields: fields)
    }

    /// Sends one message and awaits one. `timeout` bounds the whole call, here and at the server.
    public func unary<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ path: String,
        _ request: Request,
        as: Response.Type = Response.self,
        timeout: Duration? = nil
    ) async throws -> Response {
        let head = self.head(path, timeout: timeout)
        let body = try RPCMessageDecoder.frame(request)
        let connection = self.connection
        let maxMessageSize = self.maxMessageSize
        let stream: HTTP2ClientStream
        do {
            stream = try await connection.openStream(head, body: body)
        } catch {
            throw RPCError.from(error)
        }
        return try await Self.withDeadline(timeout, cancelling: stream) {
            let response = try await stream.response()
            guard response.head.status == .ok else {
                throw RPCError(.unavailable, "the server answered HTTP \(response.head.status.code), not an RPC response")
            }
            var iterator = RPCInbound<Response>(body: response.body, maxMessageSize: maxMessageSize, checkTrailers: true)
                .makeAsyncIterator()
            guard let message = try await iterator.next() else {
                throw RPCError(.internal, "the server sent no response message")
            }
            guard try await iterator.next() == nil else {
                throw RPCError(.internal, "the server sent more than one response message")
            }
            return message
        }
    }

    /// Opens a bidirectional stream: send with `call.send`, end with `call.finish`, read
    /// `call.responses`. `timeout` bounds the whole call.
    public func bidirectional<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>(
        _ path: String,
        requestType: Request.Type = Request.self,
        responseType: Response.Type = Response.self,
        timeout: Duration? = nil
    ) async throws -> RPCBidirectionalCall<Request, Response> {
        let stream: HTTP2ClientStream
        do {
            stream = try await self.connection.openStream(self.head(path, timeout: timeout), endStream: false)
        } catch {
            throw RPCError.from(error)
        }
        if let timeout {
            Task {
                try await Task.sleep(for: timeout)
                stream.cancel(error: .timeout)
            }
        }
        return RPCBidirectionalCall(stream: stream, maxMessageSize: self.maxMessageSize)
    }

    /// `withDeadline` for a call on `stream`: past `timeout` the stream is reset (which ends the
    /// call at once) and the call fails with `deadlineExceeded`.
    static func withDeadline<T: Sendable>(
        _ timeout: Duration?,
        cancelling stream: HTTP2ClientStream,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        do {
            return try await ServeWire.withDeadline(after: timeout) {
                try await withTaskCancellationHandler {
                    try await body()
                } onCancel: {
                    stream.cancel(error: .timeout)
                }
            }
        } catch is DeadlineExceeded {
            throw RPCError(.deadlineExceeded, "the call's deadline passed")
        } catch {
            throw RPCError.from(error)
        }
    }
}

/// A bidirectional-streaming call in progress.
public struct RPCBidirectionalCall<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>: Sendable {
    let stream: HTTP2ClientStream
    let maxMessageSize: Int

    public func send(_ message: Request) async throws {
        do { try await self.stream.write(RPCMessageDecoder.frame(message)) } catch { throw RPCError.from(error) }
    }

    /// Ends this side's messages; responses may continue.
    public func finish() async throws {
        do { try await self.stream.finish() } catch { throw RPCError.from(error) }
    }

    /// The server's messages; the sequence ends with the call, throwing its error if it failed.
    public func responses() async throws -> RPCInbound<Response> {
        let response: HTTP2Response
        do { response = try await self.stream.response() } catch { throw RPCError.from(error) }
        guard response.head.status == .ok else {
            throw RPCError(.unavailable, "the server answered HTTP \(response.head.status.code), not an RPC response")
        }
        return RPCInbound(body: response.body, maxMessageSize: self.maxMessageSize, checkTrailers: true)
    }

    /// Abandons the call.
    public func cancel() {
        self.stream.cancel()
    }
}
