"""The read-only bucket `media` through boto3 (driven by tests/s3.rs).

Environment: S3_URL (http://127.0.0.1:PORT), S3_ACCESS_KEY, S3_SECRET_KEY, and
EXPECTED, a JSON object {key: blake3 hex} of every file stored through the native API.
Prints one line per check and exits non-zero on the first failure.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3
import botocore
from botocore.config import Config

URL = os.environ["S3_URL"]
ACCESS = os.environ["S3_ACCESS_KEY"]
SECRET = os.environ["S3_SECRET_KEY"]
EXPECTED = json.loads(os.environ["EXPECTED"])


def client(secret=SECRET, **config):
    return boto3.client(
        "s3",
        endpoint_url=URL,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}, **config),
    )


def error_code(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("the call succeeded")


def http_status(url):
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name}")


s3 = client()
names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
check("ListBuckets shows media", names == ["media"], names)
s3.head_bucket(Bucket="media")
check("HeadBucket of a missing bucket", error_code(lambda: s3.head_bucket(Bucket="nope")) in ("404", "NoSuchBucket"))

# ListObjectsV2 pages of 100 in key order, every key once, nothing else.
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="media", PaginationConfig={"PageSize": 100}):
    check("v2 page size", page["KeyCount"] <= 100, page["KeyCount"])
    keys += [o["Key"] for o in page.get("Contents", [])]
check("v2 lists every stored file once, in byte order", keys == sorted(EXPECTED), (len(keys), len(EXPECTED)))

# ListObjects v1 with Marker, and delimiter roll-up.
v1 = []
marker = ""
while True:
    page = s3.list_objects(Bucket="media", Marker=marker, MaxKeys=250)
    v1 += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    marker = v1[-1]
check("v1 pages with Marker", v1 == sorted(EXPECTED), len(v1))
top = s3.list_objects_v2(Bucket="media", Delimiter="/")
prefixes = sorted(p["Prefix"] for p in top.get("CommonPrefixes", []))
expected_prefixes = sorted({k.split("/")[0] + "/" for k in EXPECTED})
check("delimiter rolls up media types", prefixes == expected_prefixes and "Contents" not in top, prefixes)
some = sorted(EXPECTED)[0]
prefix = some.rsplit("/", 1)[0] + "/"
under = s3.list_objects_v2(Bucket="media", Prefix=prefix)
check("prefix", [o["Key"] for o in under["Contents"]] == sorted(k for k in EXPECTED if k.startswith(prefix)))

# Objects: bytes, hash header, Range, preconditions.
head = s3.head_object(Bucket="media", Key=some)
check("x-rhinobox-hash", head["ResponseMetadata"]["HTTPHeaders"]["x-rhinobox-hash"] == EXPECTED[some])
body = s3.get_object(Bucket="media", Key=some)["Body"].read()
check("GetObject bytes", len(body) == head["ContentLength"])
part = s3.get_object(Bucket="media", Key=some, Range="bytes=1-10")
check("Range", part["Body"].read() == body[1:11] and part["ContentRange"] == f"bytes 1-10/{len(body)}")
etag = head["ETag"]
check("If-None-Match on the same ETag is 304",
      error_code(lambda: s3.get_object(Bucket="media", Key=some, IfNoneMatch=etag)) in ("304", "NotModified"))
check("If-Match on another ETag is 412",
      error_code(lambda: s3.get_object(Bucket="media", Key=some, IfMatch='"0"')) in ("412", "PreconditionFailed"))
check("NoSuchKey", error_code(lambda: s3.get_object(Bucket="media", Key="images/none")) == "NoSuchKey")

# Writes are refused.
check("PutObject into media is AccessDenied",
      error_code(lambda: s3.put_object(Bucket="media", Key="x", Body=b"x")) == "AccessDenied")
check("DeleteObject in media is AccessDenied",
      error_code(lambda: s3.delete_object(Bucket="media", Key=some)) == "AccessDenied")
check("the file is still there", s3.head_object(Bucket="media", Key=some)["ContentLength"] == len(body))

# Auth: presigned v4 over plain HTTP, tampered, expired; wrong secret; unsigned.
url = s3.generate_presigned_url("get_object", Params={"Bucket": "media", "Key": some}, ExpiresIn=300)
status, data = http_status(url)
check("presigned GET", status == 200 and data == body, status)
parts = urllib.parse.urlsplit(url)
query = urllib.parse.parse_qsl(parts.query)
tampered = [(k, ("0" if v[0] != "0" else "1") + v[1:]) if k == "X-Amz-Signature" else (k, v) for k, v in query]
status, _ = http_status(urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(tampered))))
check("tampered presigned signature is 403", status == 403, status)
short = s3.generate_presigned_url("get_object", Params={"Bucket": "media", "Key": some}, ExpiresIn=1)
time.sleep(2)
status, _ = http_status(short)
check("expired presigned URL is 403", status == 403, status)
check("wrong secret is SignatureDoesNotMatch",
      error_code(lambda: client(secret="wrong").list_objects_v2(Bucket="media")) == "SignatureDoesNotMatch")
status, _ = http_status(f"{URL}/media/{urllib.parse.quote(some)}")
check("unsigned GET is 403", status == 403, status)
print("OK")
