/* The `vxmesh` CNI plugin's front: a small C program that hands one plugin run to the agent.
 *
 * Owns: nothing of CNI itself. It reads the configuration on stdin, finds the agent's socket
 * in it (the top-level "socket", else DEFAULT_SOCKET), and sends the run as it is to the
 * agent: `POST /v1/cni/exec` whose body is every CNI_* variable as "NAME=VALUE\0", one more
 * "\0", then stdin unchanged (agent.cni.service runs agent/cni/plugin.py's `run` on it and
 * answers 200 with the plugin's stdout as the body and its exit status in X-Cni-Exit-Code).
 * It writes that body to stdout and exits with that status.
 *
 * Rules:
 * - Whatever it cannot do itself, the Python plugin does: when the configuration is not a
 *   JSON object with a plain string "socket" (or none), when the agent cannot be reached or
 *   answers anything but 200 with X-Cni-Exit-Code, for VERSION, it puts stdin back (a memfd)
 *   and execs `VXMESH_PYTHON -IS -c VXMESH_BOOT` (agent/cni/plugin.py: the CNI error objects,
 *   the DEL spool while the agent is down, every message naming field and value).
 *   That includes a request sent whose answer never came (the agent died meanwhile): the
 *   Python plugin asks again (DEL and CHECK are harmless twice; an ADD that was done answers
 *   that the attachment exists, and the runtime's DEL cleans up).
 * - Its only reason to exist is the start-up time: an interpreter's start costs ~15 ms of CPU
 *   at every container start, this ~1 ms.
 *
 * Built by agent/cni/launcher.py with VXMESH_PYTHON and VXMESH_BOOT defined.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/vxmesh/agent.sock"
#define MAX_RESPONSE (16 << 20)
#define AGENT_TIMEOUT_S 60

extern char **environ;

static char *input;
static size_t input_len;

static void fail(const char *what) {
    printf("{\"code\": 5, \"msg\": \"I/O failure\", \"details\": \"vxmesh: %s: %s\"}", what,
           strerror(errno));
    exit(1);
}

/* Run the Python plugin on the same stdin; never returns. */
static void fall_back(void) {
    int fd = memfd_create("vxmesh-cni-stdin", 0);
    if (fd >= 0) {
        size_t done = 0;
        while (done < input_len) {
            ssize_t n = write(fd, input + done, input_len - done);
            if (n <= 0) break;
            done += (size_t)n;
        }
        if (done == input_len && lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, 0) == 0) {
            close(fd);
            char *argv[] = {VXMESH_PYTHON, "-IS", "-c", VXMESH_BOOT, NULL};
            execv(VXMESH_PYTHON, argv);
        }
    }
    fail("cannot run " VXMESH_PYTHON);
}

static int read_all(int fd, char **out, size_t *len, size_t limit) {
    size_t size = 4096, used = 0;
    char *buf = malloc(size);
    if (!buf) return -1;
    for (;;) {
        if (used == size) {
            if (size >= limit) { free(buf); return -1; }
            size *= 2;
            char *bigger = realloc(buf, size);
            if (!bigger) { free(buf); return -1; }
            buf = bigger;
        }
        ssize_t n = read(fd, buf + used, size - used);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            free(buf);
            return -1;
        }
        used += (size_t)n;
    }
    *out = buf;
    *len = used;
    return 0;
}

/* JSON scanning, just enough to find a top-level string value: positions into `input`. */
static size_t skip_ws(size_t i) {
    while (i < input_len && (input[i] == ' ' || input[i] == '\t' || input[i] == '\n' ||
                             input[i] == '\r'))
        i++;
    return i;
}

/* At a '"': the index after the closing quote; *escaped set if it holds a backslash. */
static size_t skip_string(size_t i, int *escaped) {
    for (i++; i < input_len; i++) {
        if (input[i] == '\\') { *escaped = 1; i++; }
        else if (input[i] == '"') return i + 1;
    }
    return 0;
}

/* At any value: the index after it (0: malformed). */
static size_t skip_value(size_t i) {
    int escaped = 0, depth = 0;
    if (i >= input_len) return 0;
    if (input[i] == '"') return skip_string(i, &escaped);
    if (input[i] != '{' && input[i] != '[') {
        while (i < input_len && !strchr(",}] \t\r\n", input[i])) i++;
        return i;
    }
    for (; i < input_len; i++) {
        if (input[i] == '"') {
            i = skip_string(i, &escaped);
            if (!i) return 0;
            i--;
        } else if (input[i] == '{' || input[i] == '[') depth++;
        else if ((input[i] == '}' || input[i] == ']') && --depth == 0) return i + 1;
    }
    return 0;
}

/* The configuration's "socket" into `path`: 1 found, 0 absent, -1 cannot tell here. */
static int find_socket(char *path, size_t size) {
    size_t i = skip_ws(0);
    if (i >= input_len || input[i] != '{') return -1;
    i = skip_ws(i + 1);
    if (i < input_len && input[i] == '}') return 0;
    while (i < input_len && input[i] == '"') {
        int escaped = 0;
        size_t key = i + 1, end = skip_string(i, &escaped);
        if (!end) return -1;
        int is_socket = !escaped && end - key - 1 == 6 && memcmp(input + key, "socket", 6) == 0;
        i = skip_ws(end);
        if (i >= input_len || input[i] != ':') return -1;
        i = skip_ws(i + 1);
        if (is_socket) {
            escaped = 0;
            if (i >= input_len || input[i] != '"') return -1;
            end = skip_string(i, &escaped);
            size_t n = end ? end - i - 2 : 0;
            if (!end || escaped || n == 0 || n >= size) return -1;
            memcpy(path, input + i + 1, n);
            path[n] = '\0';
            return memchr(path, '\0', n) ? -1 : 1;
        }
        i = skip_value(i);
        if (!i) return -1;
        i = skip_ws(i);
        if (i < input_len && input[i] == ',') i = skip_ws(i + 1);
        else if (i < input_len && input[i] == '}') return 0;
        else return -1;
    }
    return -1;
}

static int send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void) {
    if (read_all(0, &input, &input_len, SIZE_MAX) != 0) fail("cannot read stdin");
    const char *command = getenv("CNI_COMMAND");
    if (!command || strcmp(command, "VERSION") == 0) fall_back();
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    int found = find_socket(address.sun_path, sizeof(address.sun_path));
    if (found < 0 || (found == 1 && address.sun_path[0] != '/')) fall_back();
    if (found == 0) strcpy(address.sun_path, DEFAULT_SOCKET);

    size_t body_len = 1 + input_len;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "CNI_", 4) == 0) body_len += strlen(*e) + 1;
    char head[160];
    int head_len = snprintf(head, sizeof(head),
                            "POST /v1/cni/exec HTTP/1.1\r\nHost: vxmesh\r\nConnection: close\r\n"
                            "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n",
                            body_len);
    char *request = malloc((size_t)head_len + body_len);
    if (!request) fall_back();
    char *at = memcpy(request, head, (size_t)head_len) + head_len;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "CNI_", 4) == 0) at = stpcpy(at, *e) + 1;
    *at++ = '\0';
    memcpy(at, input, input_len);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval timeout = {.tv_sec = AGENT_TIMEOUT_S};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout)) != 0 ||
        connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0 ||
        send_all(fd, request, (size_t)head_len + body_len) != 0)
        fall_back();
    char *response;
    size_t response_len;
    if (read_all(fd, &response, &response_len, MAX_RESPONSE) != 0) fall_back();
    close(fd);

    /* "HTTP/1.1 200 ...", headers, blank line, body (to EOF: the agent closes). */
    char *end = memmem(response, response_len, "\r\n\r\n", 4);
    if (!end || response_len < 12 || memcmp(response, "HTTP/1.", 7) != 0 ||
        memcmp(response + 8, " 200", 4) != 0)
        fall_back();
    *end = '\0';
    int status = -1;
    for (char *line = strstr(response, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, "x-cni-exit-code:", 16) == 0) {
            char *value = line + 16;
            while (*value == ' ') value++;
            if ((value[0] == '0' || value[0] == '1') && (value[1] == '\r' || value[1] == '\0'))
                status = value[0] - '0';
        }
    }
    if (status < 0) fall_back();
    char *body = end + 4;
    size_t left = response_len - (size_t)(body - response);
    while (left > 0) {
        ssize_t n = write(1, body, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 1;
        body += n;
        left -= (size_t)n;
    }
    return status;
}
