/*
 * Ask pidbus who you are, over its native socket, with no D-Bus library.
 *
 * What it shows: the native socket carries plain D-Bus messages, one per
 * SOCK_SEQPACKET record, with no SASL handshake before them (the kernel
 * tells the broker who connected). The program
 *
 *   1. connects to the native socket,
 *   2. sends the standard Hello call and reads the reply: its unique name,
 *   3. calls org.pidbus.Bus1.GetConnectionIdentity on that unique name and
 *      prints uid, pid, pidfs_id and exe from the a{sv} the broker returns.
 *
 * The messages are built and read by the small marshaller below, which
 * knows only what this program needs. See docs/protocol.md.
 *
 * Usage: whoami [SOCKET]
 *   SOCKET defaults to $PIDBUS_ADDRESS, else $XDG_RUNTIME_DIR/pidbus.sock.
 * Plain C, libc only:  cc -Wall -Wextra -O2 -o whoami whoami.c
 * Exit status 1 on any error.
 */
#define _GNU_SOURCE /* MSG_CMSG_CLOEXEC */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Message types and header field codes of the D-Bus specification. */
enum { METHOD_CALL = 1, METHOD_RETURN = 2, ERROR = 3, SIGNAL = 4 };
enum {
	F_PATH = 1, F_INTERFACE = 2, F_MEMBER = 3, F_ERROR_NAME = 4,
	F_REPLY_SERIAL = 5, F_DESTINATION = 6, F_SENDER = 7, F_SIGNATURE = 8,
	F_UNIX_FDS = 9
};

#define BUS "org.freedesktop.DBus"
#define BUS_PATH "/org/freedesktop/DBus"
#define MAX_FDS 253 /* at most this many descriptors come with one record */

static _Noreturn void die(const char *format, ...)
{
	va_list args;
	fputs("whoami: ", stderr);
	va_start(args, format);
	vfprintf(stderr, format, args);
	va_end(args);
	fputc('\n', stderr);
	exit(1);
}

/* ---- Writing (little-endian) ------------------------------------------ */

struct out {
	unsigned char data[4096];
	size_t len;
};

static void put_bytes(struct out *o, const void *bytes, size_t n)
{
	if (n > sizeof o->data - o->len)
		die("message too long for this example");
	memcpy(o->data + o->len, bytes, n);
	o->len += n;
}

static void pad_to(struct out *o, size_t n)
{
	static const unsigned char zeros[8];
	put_bytes(o, zeros, (n - o->len % n) % n);
}

static void put_u8(struct out *o, uint8_t v)
{
	put_bytes(o, &v, 1);
}

static void put_u32(struct out *o, uint32_t v)
{
	unsigned char b[4] = { (unsigned char)v, (unsigned char)(v >> 8),
			       (unsigned char)(v >> 16), (unsigned char)(v >> 24) };
	pad_to(o, 4);
	put_bytes(o, b, 4);
}

/* Type s or o: u32 length, the bytes, a NUL. */
static void put_string(struct out *o, const char *s)
{
	size_t n = strlen(s);
	put_u32(o, (uint32_t)n);
	put_bytes(o, s, n + 1);
}

/* Type g: u8 length, the bytes, a NUL. */
static void put_signature(struct out *o, const char *s)
{
	size_t n = strlen(s);
	put_u8(o, (uint8_t)n);
	put_bytes(o, s, n + 1);
}

/* Header field `code`: a struct (y v), aligned to 8. The out buffer holds
 * the field array alone, which starts at offset 16 of the message, so
 * alignments within it are the message's. */
static void put_field(struct out *o, uint8_t code, const char *sig, const char *value)
{
	pad_to(o, 8);
	put_u8(o, code);
	put_signature(o, sig);
	if (strcmp(sig, "g") == 0)
		put_signature(o, value);
	else
		put_string(o, value);
}

/* A METHOD_CALL with no argument, or with one string argument `arg`. */
static size_t method_call(struct out *msg, uint32_t serial, const char *interface,
			  const char *member, const char *arg)
{
	struct out fields = { .len = 0 }, body = { .len = 0 };
	if (arg)
		put_string(&body, arg);
	put_field(&fields, F_PATH, "o", BUS_PATH);
	put_field(&fields, F_INTERFACE, "s", interface);
	put_field(&fields, F_MEMBER, "s", member);
	put_field(&fields, F_DESTINATION, "s", BUS);
	if (arg)
		put_field(&fields, F_SIGNATURE, "g", "s");
	msg->len = 0;
	put_u8(msg, 'l'); /* little-endian */
	put_u8(msg, METHOD_CALL);
	put_u8(msg, 0); /* flags */
	put_u8(msg, 1); /* protocol version */
	put_u32(msg, (uint32_t)body.len);
	put_u32(msg, serial);
	put_u32(msg, (uint32_t)fields.len);
	put_bytes(msg, fields.data, fields.len);
	pad_to(msg, 8); /* the body starts 8-aligned */
	put_bytes(msg, body.data, body.len);
	return msg->len;
}

/* ---- Reading -------------------------------------------------------------- */

/* Offsets count from the message's start, as the specification aligns
 * them (the body starts 8-aligned, so this holds for the body too). */
struct reader {
	const unsigned char *data;
	size_t len, pos;
	int big_endian;
};

static void need(struct reader *r, size_t n)
{
	if (n > r->len - r->pos)
		die("malformed message from the broker: truncated value");
}

static void align(struct reader *r, size_t n)
{
	size_t pad = (n - r->pos % n) % n;
	need(r, pad);
	r->pos += pad;
}

static uint64_t get_uint(struct reader *r, size_t size)
{
	uint64_t v = 0;
	align(r, size);
	need(r, size);
	for (size_t i = 0; i < size; i++) {
		size_t at = r->big_endian ? i : size - 1 - i;
		v = (v << 8) | r->data[r->pos + at];
	}
	r->pos += size;
	return v;
}

/* Type s, o (length_size 4) or g (1): points into the message, which
 * holds the terminating NUL. */
static const char *get_string(struct reader *r, size_t length_size)
{
	size_t n = (size_t)get_uint(r, length_size);
	const char *s;
	need(r, n + 1);
	s = (const char *)r->data + r->pos;
	if (s[n] != '\0')
		die("malformed message from the broker: string without NUL");
	r->pos += n + 1;
	return s;
}

/* The end of the single complete type that starts at `sig`. */
static const char *type_end(const char *sig)
{
	int depth = 0;
	for (;;) {
		switch (*sig++) {
		case '\0':
			die("malformed signature from the broker");
		case 'a':
			continue; /* an array: its element type follows */
		case '(':
		case '{':
			depth++;
			continue;
		case ')':
		case '}':
			depth--;
			break;
		}
		if (depth == 0)
			return sig;
	}
}

static size_t alignment(char code)
{
	switch (code) {
	case 'y': case 'g': case 'v': return 1;
	case 'n': case 'q': return 2;
	case 'x': case 't': case 'd': case '(': case '{': return 8;
	default: return 4; /* b i u h s o a */
	}
}

/* Skips one value of the single complete type at `sig`. */
static void skip(struct reader *r, const char *sig)
{
	switch (*sig) {
	case 'y': get_uint(r, 1); break;
	case 'n': case 'q': get_uint(r, 2); break;
	case 'b': case 'i': case 'u': case 'h': get_uint(r, 4); break;
	case 'x': case 't': case 'd': get_uint(r, 8); break;
	case 's': case 'o': get_string(r, 4); break;
	case 'g': get_string(r, 1); break;
	case 'v': {
		const char *inner = get_string(r, 1);
		if (*inner == '\0' || *type_end(inner) != '\0')
			die("malformed variant from the broker");
		skip(r, inner);
		break;
	}
	case 'a': {
		size_t n = (size_t)get_uint(r, 4);
		align(r, alignment(sig[1]));
		need(r, n);
		r->pos += n;
		break;
	}
	case '(':
	case '{': {
		const char *end = type_end(sig) - 1;
		align(r, 8);
		for (const char *t = sig + 1; t < end; t = type_end(t))
			skip(r, t);
		break;
	}
	default:
		die("this example cannot read D-Bus type '%c'", *sig);
	}
}

/* One message as far as this program needs it. */
struct message {
	unsigned char *record; /* the record holding it: the caller frees it */
	uint8_t kind;
	uint32_t reply_serial;
	const char *error_name, *signature;
	struct reader body;
};

static void parse(unsigned char *record, size_t len, struct message *m)
{
	struct reader r = { .data = record, .len = len, .pos = 0 };
	uint64_t body_len;
	size_t fields_end;

	memset(m, 0, sizeof *m);
	m->record = record;
	m->signature = "";
	if (len < 16 || (record[0] != 'l' && record[0] != 'B'))
		die("the broker sent something that is not a D-Bus message");
	r.big_endian = record[0] == 'B';
	m->kind = record[1];
	r.pos = 4;
	body_len = get_uint(&r, 4);
	get_uint(&r, 4); /* the message's own serial */
	fields_end = (size_t)get_uint(&r, 4);
	if (fields_end > len - 16)
		die("malformed message from the broker: header fields too long");
	fields_end += 16;
	while (r.pos < fields_end) {
		uint8_t code;
		const char *sig;
		align(&r, 8);
		code = (uint8_t)get_uint(&r, 1);
		sig = get_string(&r, 1);
		if (code == F_REPLY_SERIAL && strcmp(sig, "u") == 0)
			m->reply_serial = (uint32_t)get_uint(&r, 4);
		else if (code == F_ERROR_NAME && strcmp(sig, "s") == 0)
			m->error_name = get_string(&r, 4);
		else if (code == F_SIGNATURE && strcmp(sig, "g") == 0)
			m->signature = get_string(&r, 1);
		else if (*sig != '\0' && *type_end(sig) == '\0')
			skip(&r, sig);
		else
			die("malformed header field from the broker");
	}
	align(&r, 8);
	if (body_len != len - r.pos)
		die("a message's header fields overrun its body");
	m->body = r;
}

/* The length of the whole message at `p`, of which `avail` bytes are in
 * its record: the broker may put several messages in one record, back to
 * back, each aligned from its own start. */
static size_t message_length(const unsigned char *p, size_t avail)
{
	struct reader r = { .data = p, .len = avail, .pos = 4 };
	uint64_t body_len, fields_len, total;

	if (avail < 16 || (p[0] != 'l' && p[0] != 'B'))
		die("the broker sent something that is not a D-Bus message");
	r.big_endian = p[0] == 'B';
	body_len = get_uint(&r, 4);
	get_uint(&r, 4); /* the message's own serial */
	fields_len = get_uint(&r, 4);
	total = (16 + fields_len + 7) / 8 * 8 + body_len;
	if (total > avail)
		die("a record from the broker ends inside a message");
	return (size_t)total;
}

/* ---- The connection ------------------------------------------------------ */

/* One record: one or more whole messages, in a buffer the caller frees.
 * Descriptors that come with it are closed (this program expects none). */
static unsigned char *receive(int sock, size_t *len)
{
	union {
		struct cmsghdr align;
		unsigned char bytes[CMSG_SPACE(MAX_FDS * sizeof(int))];
	} control;
	unsigned char *data;
	unsigned char probe;
	struct iovec iov;
	struct msghdr mh;
	ssize_t size;

	/* Peek with MSG_TRUNC: the kernel says the record's full length. */
	do
		size = recv(sock, &probe, 1, MSG_PEEK | MSG_TRUNC);
	while (size < 0 && errno == EINTR);
	if (size < 0)
		die("receive: %s", strerror(errno));
	if (size == 0)
		die("the broker closed the connection (its log says why)");
	data = malloc((size_t)size);
	if (!data)
		die("out of memory");
	iov.iov_base = data;
	iov.iov_len = (size_t)size;
	memset(&mh, 0, sizeof mh);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = control.bytes;
	mh.msg_controllen = sizeof control.bytes;
	do
		size = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (size < 0 && errno == EINTR);
	if (size < 0)
		die("receive: %s", strerror(errno));
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < n; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
				close(fd);
			}
		}
	}
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		die("a record from the broker was truncated");
	*len = (size_t)size;
	return data;
}

/* Sends one call and waits for its reply, which `reply` describes (its
 * record is the caller's to free); an error reply ends the program. Other
 * messages (the NameAcquired signal) are skipped. */
static void call(int sock, uint32_t serial, const char *interface, const char *member,
		 const char *arg, struct message *reply)
{
	struct out msg;
	size_t len = method_call(&msg, serial, interface, member, arg);
	if (send(sock, msg.data, len, 0) != (ssize_t)len)
		die("send: %s", strerror(errno));
	for (;;) {
		unsigned char *record = receive(sock, &len);
		for (size_t at = 0, n; at < len; at += n) {
			n = message_length(record + at, len - at);
			parse(record + at, n, reply);
			if ((reply->kind == METHOD_RETURN || reply->kind == ERROR) &&
			    reply->reply_serial == serial) {
				reply->record = record;
				goto answered;
			}
		}
		free(record);
	}
answered:
	if (reply->kind == ERROR) {
		const char *text = "";
		if (reply->signature[0] == 's')
			text = get_string(&reply->body, 4);
		die("%s: %s: %s", member, reply->error_name ? reply->error_name : "(no name)", text);
	}
}

static const char *socket_path(int argc, char **argv)
{
	static char path[sizeof ((struct sockaddr_un *)0)->sun_path];
	const char *address = getenv("PIDBUS_ADDRESS");
	const char *runtime = getenv("XDG_RUNTIME_DIR");

	if (argc > 1)
		return argv[1];
	if (address && *address) {
		if (strncmp(address, "unix:path=", 10) == 0)
			address += 10;
		return address;
	}
	if (runtime && *runtime) {
		if ((size_t)snprintf(path, sizeof path, "%s/pidbus.sock", runtime) >= sizeof path)
			die("$XDG_RUNTIME_DIR is too long for a socket path");
		return path;
	}
	die("no socket: give its path, or set PIDBUS_ADDRESS or XDG_RUNTIME_DIR");
	return NULL;
}

int main(int argc, char **argv)
{
	const char *path = socket_path(argc, argv);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct message reply;
	char unique_name[256];
	const char *exe = NULL;
	int have_uid = 0, have_pid = 0, have_pidfs_id = 0;
	uint32_t uid = 0, pid = 0;
	uint64_t pidfs_id = 0, dict_len;
	size_t dict_end;
	int sock;

	if (strlen(path) >= sizeof addr.sun_path)
		die("socket path too long: %s", path);
	strcpy(addr.sun_path, path);
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0)
		die("socket: %s", strerror(errno));
	if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("cannot connect to %s: %s", path, strerror(errno));

	/* Hello first; nothing else may be sent before its reply arrives. */
	call(sock, 1, BUS, "Hello", NULL, &reply);
	if (strcmp(reply.signature, "s") != 0)
		die("Hello: unexpected reply signature '%s'", reply.signature);
	snprintf(unique_name, sizeof unique_name, "%s", get_string(&reply.body, 4));
	free(reply.record);
	printf("unique name: %s\n", unique_name);

	call(sock, 2, "org.pidbus.Bus1", "GetConnectionIdentity", unique_name, &reply);
	if (strcmp(reply.signature, "a{sv}") != 0)
		die("GetConnectionIdentity: unexpected reply signature '%s'", reply.signature);
	/* a{sv}: u32 byte length, padding to 8, then 8-aligned entries of a
	 * string key and a variant (its signature, then its value). */
	dict_len = get_uint(&reply.body, 4);
	align(&reply.body, 8);
	need(&reply.body, (size_t)dict_len);
	dict_end = reply.body.pos + (size_t)dict_len;
	while (reply.body.pos < dict_end) {
		const char *key, *sig;
		align(&reply.body, 8);
		key = get_string(&reply.body, 4);
		sig = get_string(&reply.body, 1);
		if (strcmp(key, "uid") == 0 && strcmp(sig, "u") == 0) {
			uid = (uint32_t)get_uint(&reply.body, 4);
			have_uid = 1;
		} else if (strcmp(key, "pid") == 0 && strcmp(sig, "u") == 0) {
			pid = (uint32_t)get_uint(&reply.body, 4);
			have_pid = 1;
		} else if (strcmp(key, "pidfs_id") == 0 && strcmp(sig, "t") == 0) {
			pidfs_id = get_uint(&reply.body, 8);
			have_pidfs_id = 1;
		} else if (strcmp(key, "exe") == 0 && strcmp(sig, "s") == 0) {
			exe = get_string(&reply.body, 4);
		} else if (*sig != '\0' && *type_end(sig) == '\0') {
			skip(&reply.body, sig); /* keys may be added: skip the rest */
		} else {
			die("GetConnectionIdentity: malformed variant");
		}
	}

	if (have_uid)
		printf("uid:         %" PRIu32 "   (this process: %u)\n", uid, (unsigned)getuid());
	else
		printf("uid:         (not known)\n");
	if (have_pid)
		printf("pid:         %" PRIu32, pid);
	else
		printf("pid:         (not known)");
	printf("   (this process: %ld, as seen in its own pid namespace)\n", (long)getpid());
	if (have_pidfs_id)
		printf("pidfs_id:    %" PRIu64 "\n", pidfs_id);
	else
		printf("pidfs_id:    (not known)\n");
	printf("exe:         %s\n", exe ? exe : "(not known)");
	free(reply.record);
	close(sock);
	return 0;
}
