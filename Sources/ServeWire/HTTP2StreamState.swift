import HTTPTypes
import NIOCore

/// One open stream, as its connection tracks it on the event loop.
final class HTTP2StreamState {
    let id: Int32
    /// The connection owns its streams and outlives them.
    unowned(unsafe) let connection: HTTP2Connection
    /// Made on first use: a request that ends with its headers (most GETs) never needs one.
    private var inboundStorage: InboundBodySource?

    /// The receiving half of the body.
    var inbound: InboundBodySource {
        if let source = self.inboundStorage { return source }
        let source = self.connection.makeInbound(self.id)
        if let failure = self.failure { source.fail(failure) }
        self.inboundStorage = source
        return source
    }

    /// The peer's message ended with its headers (END_STREAM on HEADERS): it has no body at all
    /// (RFC 9113 §8.1), which a proxy must not turn into an empty one.
    private(set) var endedWithHeaders = false

    /// The body ended with the headers (END_STREAM on HEADERS).
    func endInboundWithHeaders() {
        self.endedWithHeaders = true
        self.inboundEnded = true
        if let source = self.inboundStorage {
            source.finish(trailers: nil)
        } else {
            self.inboundStorage = InboundBodySource.ended
        }
    }

    // Receiving headers (and trailers).
    var headerFields: [HTTPField] = []
    var headerBytes = 0
    var headReceived = false
    /// The complete head's fields, set aside when its HEADERS frame ends (trailers may arrive in
    /// the same read, before the head is acted on).
    var headFields: [HTTPField] = []

    // Sending the body: chunks waiting for nghttp2 to take them as flow control allows.
    var pending = CircularBuffer<ByteBuffer>(initialCapacity: 2)
    var pendingBytes = 0
    var headSubmitted = false
    var outboundEnded = false
    var outboundTrailers: HTTPFields?
    /// nghttp2 found no bytes to send and parked the stream until `resumeData`.
    var deferred = false
    var writeWaiters = WriteWaiters()
    var compressor: StreamingCompressor?

    /// Server: the task running the request's handler, cancelled if the client resets the
    /// stream or the connection drops (nobody is waiting for its answer any more).
    var handlerTask: Task<Void, Never>?
    /// Server: the hop coding the client accepts for the response, if any
    /// (`ServeHeaders.acceptHopCoding`).
    var acceptedCoding: ContentCoding?
    /// Server: the request was HEAD, so the response has no body but keeps the `content-length`
    /// a GET would get (RFC 9110 §9.3.2).
    var isHeadRequest = false
    /// Server: the response's `content-length` (before any hop compression) and the body bytes
    /// written so far: a body that ends short of it is a cut, and must reach the client as one
    /// (RST_STREAM), never as a complete answer (RFC 9110 §8.6).
    var declaredLength: Int?
    var bodyWritten = 0
    /// Server: the response has no body (HEAD, 1xx, 204, 304); what is written is dropped.
    var dropsBody = false
    /// The peer's message has ended (END_STREAM seen), so no body stall can happen any more.
    var inboundEnded = false {
        didSet { if self.inboundEnded { self.stopBodyWatch() } }
    }
    /// Server: the handler is waiting on the request body (`bodyReadTimeout`) since its head was
    /// acted on, until the body ends or the stream fails.
    var watchesBody = false
    /// Server: body bytes received that the handler has not read yet (as its reader reports
    /// them). While there are some, a quiet client is held back by flow control, not stalling.
    var unreadBodyBytes = 0
    /// Server: when the body last made progress (bytes arrived, or the handler caught up).
    var bodyProgress = NIODeadline.distantPast
    /// Server: checks for a stalled body; one timer per stream, moved on when it finds progress.
    var bodyTimer: Scheduled<Void>?
    /// Client: fulfilled with the response head.
    var responsePromise: EventLoopPromise<HTTP2Response>?
    var timeout: Scheduled<Void>?
    var failure: HTTP2Error?

    init(id: Int32, connection: HTTP2Connection) {
        self.id = id
        self.connection = connection
    }

    /// Ends the stream with an error for everyone still waiting on it. The first error wins.
    func fail(_ error: HTTP2Error) {
        if self.failure == nil { self.failure = error }
        self.inboundStorage?.fail(error)
        self.responsePromise?.fail(error)
        self.responsePromise = nil
        self.writeWaiters.removeAll().fail(error)
        self.timeout?.cancel()
        self.timeout = nil
        self.stopBodyWatch()
        self.pending.removeAll()
        self.pendingBytes = 0
    }

    func stopBodyWatch() {
        self.watchesBody = false
        self.bodyTimer?.cancel()
        self.bodyTimer = nil
    }

    /// Wakes writers once the queue has drained to half the high watermark (hysteresis, so a
    /// writer is not woken for every frame).
    func releaseWriters(highWatermark: Int) {
        guard self.pendingBytes <= highWatermark / 2 else { return }
        self.writeWaiters.removeAll().succeed()
    }
}
