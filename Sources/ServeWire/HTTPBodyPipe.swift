import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore

/// A body made in this process and read in this process: the writing side of an `HTTPBody`.
/// A writer that gets ahead of its reader by more than `highWatermark` bytes waits (as an HTTP/2
/// sender waits for WINDOW_UPDATE), so a fast producer never grows a buffer here. A reader that
/// lets the body go before its end fails the writer (its next or waiting write throws), and
/// `onReaderGone` runs, so a producer nobody reads stops.
public final class HTTPBodyPipe: Sendable {
    private struct State {
        /// Bytes written and not yet taken by the reader.
        var unread = 0
        var waiter: CheckedContinuation<Void, any Error>?
        var failure: (any Error)?
        /// The source, until `body` is taken (then only its readers hold it).
        var held: InboundBodySource?
        var onReaderGone: (@Sendable () -> Void)?
    }

    /// The reader let the body go before the writer ended it.
    public struct ReaderGone: Error, CustomStringConvertible {
        public var description: String { "the body's reader went away" }
    }

    private let state: NIOLockedValueBox<State>
    /// Held weakly: the readers own the source, so that letting it go is seen here.
    private weak let source: InboundBodySource?
    private let highWatermark: Int

    public init(highWatermark: Int = 64 << 10) {
        let state = NIOLockedValueBox(State())
        let source = InboundBodySource(
            onConsume: { consumed in
                let waiter = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
                    state.unread -= consumed
                    defer { state.waiter = nil }
                    return state.waiter
                }
                waiter?.resume()
            },
            onRelease: { Self.readerGone(state) })
        state.withLockedValue { $0.held = source }
        self.state = state
        self.source = source
        self.highWatermark = highWatermark
    }

    /// The body to read (take it once: the pipe holds it only until then).
    public func takeBody() -> HTTPBody {
        let source = self.state.withLockedValue { state -> InboundBodySource? in
            defer { state.held = nil }
            return state.held
        }
        return source.map { HTTPBody(source: $0) } ?? HTTPBody(source: .ended)
    }

    /// Runs `action` once the reader lets the body go (at once if it has).
    public func onReaderGone(_ action: @escaping @Sendable () -> Void) {
        let gone = self.state.withLockedValue { state -> Bool in
            if state.failure is ReaderGone { return true }
            state.onReaderGone = action
            return false
        }
        if gone { action() }
    }

    private static func readerGone(_ state: NIOLockedValueBox<State>) {
        let (waiter, action) = state.withLockedValue { state -> (CheckedContinuation<Void, any Error>?, (@Sendable () -> Void)?) in
            if state.failure == nil { state.failure = ReaderGone() }
            defer {
                state.waiter = nil
                state.onReaderGone = nil
            }
            return (state.waiter, state.onReaderGone)
        }
        waiter?.resume(throwing: ReaderGone())
        action?()
    }

    /// Adds `chunk` to the body; waits while the reader is more than `highWatermark` bytes behind.
    /// Throws once the pipe failed (`fail`, or the reader went), and when the writer's task is
    /// cancelled while it waits.
    public func write(_ chunk: ByteBuffer) async throws {
        guard chunk.readableBytes > 0 else { return }
        let failure = self.state.withLockedValue { state -> (any Error)? in
            if state.failure == nil { state.unread += chunk.readableBytes }
            return state.failure
        }
        if let failure { throw failure }
        guard let source = self.source else { throw ReaderGone() }
        source.append(chunk)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Now { case go, wait, fail(any Error) }
                let now = self.state.withLockedValue { state -> Now in
                    if let failure = state.failure { return .fail(failure) }
                    if state.unread <= self.highWatermark { return .go }
                    if Task.isCancelled { return .fail(CancellationError()) }
                    state.waiter = continuation
                    return .wait
                }
                switch now {
                case .go: continuation.resume()
                case .fail(let error): continuation.resume(throwing: error)
                case .wait: break
                }
            }
        } onCancel: {
            self.state.withLockedValue { state in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume(throwing: CancellationError())
        }
    }

    /// Ends the body (the reader sees its end after what was written).
    public func finish(trailers: HTTPFields? = nil) {
        self.source?.finish(trailers: trailers)
    }

    /// Ends the body with `error`: the reader gets it (after nothing more), and a waiting or later
    /// write throws it. A body already finished stays as it was.
    public func fail(_ error: any Error) {
        let waiter = self.state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
            if state.failure == nil { state.failure = error }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(throwing: error)
        self.source?.fail(error)
    }
}
