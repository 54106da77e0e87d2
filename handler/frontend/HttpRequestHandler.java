// TorchServe 0.12.0's HttpRequestHandler (Apache License 2.0, pytorch/serve
// frontend/server/src/main/java/org/pytorch/serve/http/HttpRequestHandler.java), the same class with two
// changes at the door of every request, before TorchServe reads it:
//
// 1. A body sent as `Content-Type: application/x-www-form-urlencoded` that holds bytes no such form can hold
//    (anything outside printable ASCII: any image file) is a file, and goes on as application/octet-stream.
//    `curl --data-binary @face.png URL` sends that content type; TorchServe decoded the image as a form and
//    answered 500 (ErrorDataDecoderException) before any handler ran. A form that does not decode is a 400
//    that says how to send an image.
// 2. /predictions drops the query string before the handler (pytorch/serve#989): `?points=68` goes on as the
//    request's `Points` header, which the handlers read, unless the request has one.
//
// TorchServe's launcher puts "." first on the frontend's class path, so this class, compiled into the folder
// TorchServe starts in, takes the place of the jar's (facekp/torchserve.py and the Dockerfile do that).
// docs/reliability.md has the measurement and the lines that work.
package org.pytorch.serve.http;

import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.SimpleChannelInboundHandler;
import io.netty.handler.codec.http.FullHttpRequest;
import io.netty.handler.codec.http.HttpHeaderNames;
import io.netty.handler.codec.http.HttpHeaderValues;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpUtil;
import io.netty.handler.codec.http.QueryStringDecoder;
import io.netty.handler.codec.http.multipart.HttpPostRequestDecoder;
import java.util.List;
import org.pytorch.serve.archive.DownloadArchiveException;
import org.pytorch.serve.archive.model.ModelException;
import org.pytorch.serve.archive.model.ModelNotFoundException;
import org.pytorch.serve.archive.model.ModelVersionNotFoundException;
import org.pytorch.serve.archive.workflow.WorkflowNotFoundException;
import org.pytorch.serve.util.NettyUtils;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** Handles inbound HTTP requests: TorchServe's, with a file sent as a form read as a file. */
public class HttpRequestHandler extends SimpleChannelInboundHandler<FullHttpRequest> {

    private static final Logger logger = LoggerFactory.getLogger(HttpRequestHandler.class);
    static final String POINTS = "points";
    static final String HOW_TO_SEND =
            "the body was sent as an HTML form (Content-Type: application/x-www-form-urlencoded, curl"
                    + " --data-binary's default) and is not one: send an image with curl -T face.png URL,"
                    + " --data-binary @face.png -H 'Content-Type: image/png', or curl -F data=@face.png URL";
    private HttpRequestHandlerChain handlerChain;

    public HttpRequestHandler() {}

    public HttpRequestHandler(HttpRequestHandlerChain chain) {
        handlerChain = chain;
    }

    @Override
    protected void channelRead0(ChannelHandlerContext ctx, FullHttpRequest req) {
        try {
            NettyUtils.requestReceived(ctx.channel(), req);
            if (!req.decoderResult().isSuccess()) {
                throw new BadRequestException("Invalid HTTP message.");
            }
            QueryStringDecoder decoder = new QueryStringDecoder(req.uri());
            String path = decoder.path();

            String[] segments = path.split("/");
            readFileSentAsForm(req);
            if (segments.length > 1 && "predictions".equals(segments[1])) {
                pointsFromQuery(req, decoder);
            }
            handlerChain.handleRequest(ctx, req, decoder, segments);
        } catch (ResourceNotFoundException
                | ModelNotFoundException
                | ModelVersionNotFoundException
                | WorkflowNotFoundException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.NOT_FOUND, e);
        } catch (BadRequestException | ModelException | DownloadArchiveException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.BAD_REQUEST, e);
        } catch (HttpPostRequestDecoder.ErrorDataDecoderException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.BAD_REQUEST, new BadRequestException(HOW_TO_SEND));
        } catch (ConflictStatusException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.CONFLICT, e);
        } catch (RequestTimeoutException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.REQUEST_TIMEOUT, e);
        } catch (MethodNotAllowedException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.METHOD_NOT_ALLOWED, e);
        } catch (ServiceUnavailableException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.SERVICE_UNAVAILABLE, e);
        } catch (OutOfMemoryError e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.INSUFFICIENT_STORAGE, e);
        } catch (IllegalArgumentException e) {
            logger.error("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.FORBIDDEN, e);
        } catch (Throwable t) {
            logger.error("", t);
            NettyUtils.sendError(ctx, HttpResponseStatus.INTERNAL_SERVER_ERROR, t);
        }
    }

    /** A form-encoded body that holds bytes no such form can hold goes on as the file it is. */
    static void readFileSentAsForm(FullHttpRequest req) {
        CharSequence type = HttpUtil.getMimeType(req);
        if (type != null
                && HttpHeaderValues.APPLICATION_X_WWW_FORM_URLENCODED.contentEqualsIgnoreCase(type)
                && !formBytesOnly(req.content())) {
            req.headers().set(HttpHeaderNames.CONTENT_TYPE, HttpHeaderValues.APPLICATION_OCTET_STREAM);
        }
    }

    /** Whether every byte could be in an urlencoded form: printable ASCII (and the line breaks some send). */
    static boolean formBytesOnly(ByteBuf body) {
        int end = body.writerIndex();
        for (int i = body.readerIndex(); i < end; i++) {
            byte b = body.getByte(i);
            if ((b < 0x20 || b > 0x7e) && b != '\r' && b != '\n' && b != '\t') {
                return false;
            }
        }
        return true;
    }

    /** ?points=N of a /predictions request, which TorchServe drops, as its Points header. */
    static void pointsFromQuery(FullHttpRequest req, QueryStringDecoder decoder) {
        List<String> points = decoder.parameters().get(POINTS);
        if (points != null && !points.isEmpty() && !req.headers().contains(POINTS)) {
            req.headers().set(POINTS, points.get(0));
        }
    }

    @Override
    public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
        logger.error("", cause);
        if (cause instanceof OutOfMemoryError) {
            NettyUtils.sendError(ctx, HttpResponseStatus.INSUFFICIENT_STORAGE, cause);
        }
        ctx.close();
    }
}
