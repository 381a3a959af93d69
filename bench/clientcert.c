/*
 * LD_PRELOAD shim that makes any OpenSSL 1.1/3.x client present a client
 * certificate: wrk and h2load have no option for one.
 *
 * Every SSL_CTX the program creates (SSL_CTX_new, and SSL_CTX_new_ex on
 * OpenSSL 3) gets the certificate chain from $BENCH_CLIENT_CERT (PEM, leaf
 * first) and the private key from $BENCH_CLIENT_KEY (PEM) loaded into it.
 * A chain or key that does not load, or a key that does not match, aborts
 * the program with a message: a run that silently presents no certificate
 * would measure the wrong thing. With neither variable set the shim does
 * nothing.
 *
 * No OpenSSL headers are needed: the few prototypes are declared here with
 * opaque pointers, and the real functions are found with dlsym.
 *
 *   cc -shared -fPIC -O2 -o clientcert.so clientcert.c -ldl
 *   BENCH_CLIENT_CERT=client.pem BENCH_CLIENT_KEY=client-key.pem \
 *       LD_PRELOAD=./clientcert.so wrk https://127.0.0.1:8443/
 *
 * Benchmark tool only (bench/policy.py builds it in its temp directory).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;

#define BENCH_SSL_FILETYPE_PEM 1

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method);
SSL_CTX *SSL_CTX_new_ex(OSSL_LIB_CTX *libctx, const char *propq, const SSL_METHOD *method);

typedef SSL_CTX *(*ctx_new_fn)(const SSL_METHOD *);
typedef SSL_CTX *(*ctx_new_ex_fn)(OSSL_LIB_CTX *, const char *, const SSL_METHOD *);
typedef int (*use_chain_fn)(SSL_CTX *, const char *);
typedef int (*use_key_fn)(SSL_CTX *, const char *, int);
typedef int (*check_key_fn)(const SSL_CTX *);

static void *must_find(const char *name)
{
    void *sym = dlsym(RTLD_NEXT, name);
    if (sym == NULL) {
        sym = dlsym(RTLD_DEFAULT, name);
    }
    if (sym == NULL) {
        fprintf(stderr, "clientcert shim: %s not found (%s)\n", name, dlerror());
        abort();
    }
    return sym;
}

static SSL_CTX *with_client_cert(SSL_CTX *ctx)
{
    const char *cert = getenv("BENCH_CLIENT_CERT");
    const char *key = getenv("BENCH_CLIENT_KEY");
    if (ctx == NULL || (cert == NULL && key == NULL)) {
        return ctx;
    }
    if (cert == NULL || key == NULL) {
        fprintf(stderr, "clientcert shim: set both BENCH_CLIENT_CERT and BENCH_CLIENT_KEY\n");
        abort();
    }
    use_chain_fn use_chain = (use_chain_fn)must_find("SSL_CTX_use_certificate_chain_file");
    use_key_fn use_key = (use_key_fn)must_find("SSL_CTX_use_PrivateKey_file");
    check_key_fn check_key = (check_key_fn)must_find("SSL_CTX_check_private_key");
    if (use_chain(ctx, cert) != 1) {
        fprintf(stderr, "clientcert shim: cannot load certificate chain %s\n", cert);
        abort();
    }
    if (use_key(ctx, key, BENCH_SSL_FILETYPE_PEM) != 1 || check_key(ctx) != 1) {
        fprintf(stderr, "clientcert shim: cannot load key %s or it does not match the certificate\n", key);
        abort();
    }
    if (getenv("BENCH_CLIENT_CERT_VERBOSE") != NULL) {
        fprintf(stderr, "clientcert shim: client certificate %s loaded into SSL_CTX %p\n", cert, (void *)ctx);
    }
    return ctx;
}

/* OpenSSL 3's SSL_CTX_new calls SSL_CTX_new_ex; whether that inner call
 * reaches this file depends on how libssl was linked, so `depth` makes the
 * outermost wrapper the only one that loads the certificate. */
static __thread int depth = 0;

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
{
    static ctx_new_fn real = NULL;
    if (real == NULL) {
        real = (ctx_new_fn)must_find("SSL_CTX_new");
    }
    depth++;
    SSL_CTX *ctx = real(method);
    depth--;
    return depth == 0 ? with_client_cert(ctx) : ctx;
}

SSL_CTX *SSL_CTX_new_ex(OSSL_LIB_CTX *libctx, const char *propq, const SSL_METHOD *method)
{
    static ctx_new_ex_fn real = NULL;
    if (real == NULL) {
        real = (ctx_new_ex_fn)must_find("SSL_CTX_new_ex");
    }
    depth++;
    SSL_CTX *ctx = real(libctx, propq, method);
    depth--;
    return depth == 0 ? with_client_cert(ctx) : ctx;
}
