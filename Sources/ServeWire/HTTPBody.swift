import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore

/// The receiving half of one stream's body: chunks arrive from the connection's event loop and
/// are taken by an async consumer.
///
/// Flow control reaches the sender through this type: bytes are acknowledged to nghttp2 (and so
/// turned into WINDOW_UPDATE frames) only once the consumer has taken them, so a slow reader
/// holds back its writer instead of growing buffers here (RFC 9113 §5.2).
final class InboundBodySource: Sendable {
    private struct State {
        var chunks = CircularBuffer<ByteBuffer>(initialCapacity: 4)
        var finished = false
        var failure: (any Error)?
        /// The body was cut short (`cutShort`): this error follows the chunks already received.
        var cut: (any Error)?
        var trailers: HTTPFields?
        var waiter: CheckedContinuation<ByteBuffer?, any Error>?
        /// Bytes taken by the consumer and not yet reported to the connection.
        var unreported = 0
    }

    private let state = NIOLockedValueBox(State())
    /// Reports consumed bytes to the connection (hops onto its event loop).
    private let onConsume: @Sendable (Int) -> Void
    /// Report consumption in batches of at least this many bytes, or when the buffer runs dry.
    private static let reportThreshold = 32 << 10

    /// Called when the source goes (its last reader let it go), read to the end or not.
    private let onRelease: (@Sendable () -> Void)?

    init(onConsume: @escaping @Sendable (Int) -> Void, onRelease: (@Sendable () -> Void)? = nil) {
        self.onConsume = onConsume
        self.onRelease = onRelease
    }

    deinit {
        // Whatever was received and never read still counts against the connection's window.
        let remaining = self.state.withLockedValue { state in
            state.chunks.reduce(state.unreported) { $0 + $1.readableBytes }
        }
        if remaining > 0 { self.onConsume(remaining) }
        self.onRelease?()
    }

    /// A source with nothing to receive (a request or response that ended with its headers).
    static func empty() -> InboundBodySource {
        let source = InboundBodySource(onConsume: { _ in })
        source.finish(trailers: nil)
        return source
    }

    /// One shared, already ended source: an ended source never changes again.
    static let ended = InboundBodySource.empty()

    // MARK: producer side (the connection's event loop)

    func append(_ chunk: ByteBuffer) {
        let waiter: CheckedContinuation<ByteBuffer?, any Error>? = self.state.withLockedValue { state in
            guard !state.finished, state.failure == nil, state.cut == nil else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.chunks.append(chunk)
            return nil
        }
        if let waiter {
            waiter.resume(returning: chunk)
            self.consumed(chunk.readableBytes, drained: true)
        }
    }

    func finish(trailers: HTTPFields?) {
        let waiter: CheckedContinuation<ByteBuffer?, any Error>? = self.state.withLockedValue { state in
            guard !state.finished, state.failure == nil, state.cut == nil else { return nil }
            state.finished = true
            state.trailers = trailers
            defer { state.waiter = nil }
            return state.chunks.isEmpty ? state.waiter : nil
        }
        waiter?.resume(returning: nil)
    }

    /// Ends the body with an error. Bytes received but never read are reported as consumed, so
    /// the connection's receive window does not shrink for good.
    func fail(_ error: any Error) {
        let (waiter, dropped): (CheckedContinuation<ByteBuffer?, any Error>?, Int) = self.state.withLockedValue { state in
            // A body that arrived whole stays readable whatever happens to its stream later.
            guard state.failure == nil, !state.finished else { return (nil, 0) }
            state.failure = error
            let dropped = state.chunks.reduce(state.unreported) { $0 + $1.readableBytes }
            state.chunks.removeAll()
            state.unreported = 0
            defer { state.waiter = nil }
            return (state.waiter, dropped)
        }
        waiter?.resume(throwing: error)
        if dropped > 0 { self.onConsume(dropped) }
    }

    /// The peer stopped in the middle of the body (it closed its connection): what it sent
    /// before stopping is still its data, so the chunks received are read first, then `error`.
    /// A proxy passes them on before the cut, as the peer sent them.
    func cutShort(_ error: any Error) {
        let waiter: CheckedContinuation<ByteBuffer?, any Error>? = self.state.withLockedValue { state in
            guard !state.finished, state.failure == nil, state.cut == nil else { return nil }
            state.cut = error
            // A waiting reader means nothing is buffered: it gets the error now.
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(throwing: error)
    }

    // MARK: consumer side

    func next() async throws -> ByteBuffer? {
        enum Immediate {
            case chunk(ByteBuffer, drained: Bool)
            case end
            case failure(any Error)
            case wait
        }
        let immediate: Immediate = self.state.withLockedValue { state in
            if let failure = state.failure { return .failure(failure) }
            if let chunk = state.chunks.popFirst() { return .chunk(chunk, drained: state.chunks.isEmpty) }
            if state.finished { return .end }
            if let cut = state.cut { return .failure(cut) }
            return .wait
        }
        switch immediate {
        case .chunk(let chunk, let drained):
            self.consumed(chunk.readableBytes, drained: drained)
            return chunk
        case .end:
            return nil
        case .failure(let error):
            throw error
        case .wait:
            // Cancellable: a reader whose task is cancelled (its client left, its deadline
            // passed) stops waiting for bytes that may never come.
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    let now: Immediate = self.state.withLockedValue { state in
                        if let failure = state.failure { return .failure(failure) }
                        if let chunk = state.chunks.popFirst() { return .chunk(chunk, drained: state.chunks.isEmpty) }
                        if state.finished { return .end }
                        if let cut = state.cut { return .failure(cut) }
                        // Checked under the lock the cancellation handler takes: either it
                        // finds this waiter, or this sees the task cancelled.
                        if Task.isCancelled { return .failure(CancellationError()) }
                        precondition(state.waiter == nil, "an HTTP/2 body can be read by one consumer at a time")
                        state.waiter = continuation
                        return .wait
                    }
                    switch now {
                    case .chunk(let chunk, let drained):
                        continuation.resume(returning: chunk)
                        self.consumed(chunk.readableBytes, drained: drained)
                    case .end: continuation.resume(returning: nil)
                    case .failure(let error): continuation.resume(throwing: error)
                    case .wait: break
                    }
                }
            } onCancel: {
                self.state.withLockedValue { state -> CheckedContinuation<ByteBuffer?, any Error>? in
                    defer { state.waiter = nil }
                    return state.waiter
                }?.resume(throwing: CancellationError())
            }
        }
    }

    var trailers: HTTPFields? {
        self.state.withLockedValue { $0.trailers }
    }

    /// The whole rest of the body and its trailers, if it has ended already (nil: it has not, or
    /// it failed, or a consumer is waiting). Small responses usually arrive with their head, so a
    /// proxy can pass them on in one write instead of chunk by chunk.
    func takeIfEnded() -> (ByteBuffer, HTTPFields?)? {
        let taken: (ByteBuffer, HTTPFields?, Int)? = self.state.withLockedValue { state in
            guard state.finished, state.failure == nil, state.waiter == nil else { return nil }
            var whole = state.chunks.popFirst() ?? ByteBuffer()
            while var chunk = state.chunks.popFirst() { whole.writeBuffer(&chunk) }
            defer { state.unreported = 0 }
            return (whole, state.trailers, state.unreported + whole.readableBytes)
        }
        guard let (whole, trailers, report) = taken else { return nil }
        if report > 0 { self.onConsume(report) }
        return (whole, trailers)
    }

    private func consumed(_ count: Int, drained: Bool) {
        let report: Int = self.state.withLockedValue { state in
            state.unreported += count
            guard drained || state.unreported >= Self.reportThreshold else { return 0 }
            defer { state.unreported = 0 }
            return state.unreported
        }
        if report > 0 { self.onConsume(report) }
    }
}

/// A body received on an HTTP/2 stream: an async sequence of chunks, in order, each as it
/// arrived (nothing is gathered whole unless you call `collect(upTo:)`).
///
/// A body sent with `content-encoding: gzip` or `deflate` is decoded as it is read, and refused
/// past the connection's `maxDecompressedBodySize`.
public struct HTTPBody: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer

    let source: InboundBodySource
    let decoding: ContentCoding?
    let decodeLimit: Int

    init(source: InboundBodySource, decoding: ContentCoding? = nil, decodeLimit: Int = .max) {
        self.source = source
        self.decoding = decoding
        self.decodeLimit = decodeLimit
    }

    /// An empty body.
    public static var empty: HTTPBody { HTTPBody(source: .empty()) }

    /// A body that is `bytes`, already whole (a kept request body sent again, or handed to a
    /// replica in the same process).
    public init(bytes: ByteBuffer) {
        let source = InboundBodySource(onConsume: { _ in })
        if bytes.readableBytes > 0 { source.append(bytes) }
        source.finish(trailers: nil)
        self.init(source: source)
    }

    /// The content-coding the body was sent with and is decoded from as it is read (nil: none).
    public var contentCoding: ContentCoding? { self.decoding }

    /// Trailers that ended the body, once it has been read to its end.
    public var trailers: HTTPFields? { self.source.trailers }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let source: InboundBodySource
        var decompressor: StreamingDecompressor?
        var ended = false

        public mutating func next() async throws -> ByteBuffer? {
            guard !self.ended else { return nil }
            guard let decompressor = self.decompressor else {
                return try await self.source.next()
            }
            // Decode until some output appears: a compressed chunk may decode to nothing yet.
            while true {
                guard let chunk = try await self.source.next() else {
                    self.ended = true
                    do { try decompressor.finish() } catch { throw HTTP2Error.badBody("\(error)") }
                    return nil
                }
                var output = ByteBuffer()
                do { try decompressor.decompress(chunk, into: &output) } catch let error as CompressionError {
                    self.ended = true
                    if case .outputLimitExceeded(let limit) = error.kind { throw HTTP2Error.bodyTooLarge(limit: limit) }
                    throw HTTP2Error.badBody("\(error)")
                }
                if output.readableBytes > 0 { return output }
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(
            source: self.source,
            decompressor: self.decoding.map { StreamingDecompressor(coding: $0, limit: self.decodeLimit) }
        )
    }

    /// The whole body and its trailers when it has already arrived to its end and needs no
    /// decoding, without waiting; nil otherwise (read it as a sequence then). Once it returns a
    /// body, the body has been read.
    public func takeIfEnded() -> (body: ByteBuffer, trailers: HTTPFields?)? {
        guard self.decoding == nil else { return nil }
        return self.source.takeIfEnded()
    }

    /// Reads the whole body into one buffer, refusing one larger than `maxBytes`.
    public func collect(upTo maxBytes: Int) async throws -> ByteBuffer {
        var result = ByteBuffer()
        for try await var chunk in self {
            guard result.readableBytes + chunk.readableBytes <= maxBytes else {
                throw HTTP2Error.bodyTooLarge(limit: maxBytes)
            }
            result.writeBuffer(&chunk)
        }
        return result
    }
}
